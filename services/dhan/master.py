"""Dhan's scrip master: the instrument record and the parser of the master CSV, compact or
detailed, by header name, and of the generator's previous-close sidecar.

A malformed row is rejected with its line number and a reason; it never aborts the load.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Final

from services.common.instruments import FUTURE_TYPES, INSTRUMENT_TYPES, MASTER_SEGMENTS, OPTION_TYPES
from services.common.keys import Key

InstrumentId = Key  # (Dhan segment name, security id)

# The generator's sidecar of previous closes, one row per master row.
PRICES_HEADER: Final = ("EXCHANGE_SEGMENT", "SECURITY_ID", "PREVIOUS_CLOSE")


@dataclass(slots=True)
class InstrumentRecord:
    """One instrument as the master describes it (the registry's in-memory record)."""

    segment: str  # Dhan segment name, e.g. "NSE_EQ"
    security_id: int
    exchange: str  # NSE, BSE, MCX
    instrument_type: str  # INDEX, EQUITY, FUTIDX, ...
    trading_symbol: str
    display_name: str
    underlying_symbol: str
    lot_size: float
    tick_size: float  # rupees
    expiry: date | None
    expiry_flag: str  # "W", "M" or ""
    strike: float | None
    option_type: str  # "CE", "PE" or ""
    series: str
    previous_close: float | None = None

    @property
    def key(self) -> InstrumentId:
        return (self.segment, self.security_id)

    @property
    def is_option(self) -> bool:
        return self.instrument_type in OPTION_TYPES

    @property
    def is_future(self) -> bool:
        return self.instrument_type in FUTURE_TYPES

    @property
    def kind_rank(self) -> int:
        """Search order of kinds: cash, index, futures, options."""
        if self.instrument_type == "INDEX":
            return 1
        if self.is_future:
            return 2
        if self.is_option:
            return 3
        return 0


# Canonical field -> header name in each format.
_COMPACT = {
    "exchange": "SEM_EXM_EXCH_ID",
    "segment": "SEM_SEGMENT",
    "security_id": "SEM_SMST_SECURITY_ID",
    "instrument": "SEM_INSTRUMENT_NAME",
    "trading_symbol": "SEM_TRADING_SYMBOL",
    "lot_size": "SEM_LOT_UNITS",
    "display_name": "SEM_CUSTOM_SYMBOL",
    "expiry": "SEM_EXPIRY_DATE",
    "strike": "SEM_STRIKE_PRICE",
    "option_type": "SEM_OPTION_TYPE",
    "tick_size": "SEM_TICK_SIZE",
    "expiry_flag": "SEM_EXPIRY_FLAG",
    "series": "SEM_SERIES",
    "symbol_name": "SM_SYMBOL_NAME",
}
_DETAILED = {
    "exchange": "EXCH_ID",
    "segment": "SEGMENT",
    "security_id": "SECURITY_ID",
    "instrument": "INSTRUMENT",
    "trading_symbol": "SYMBOL_NAME",
    "lot_size": "LOT_SIZE",
    "display_name": "DISPLAY_NAME",
    "expiry": "SM_EXPIRY_DATE",
    "strike": "STRIKE_PRICE",
    "option_type": "OPTION_TYPE",
    "tick_size": "TICK_SIZE",
    "expiry_flag": "EXPIRY_FLAG",
    "series": "SERIES",
    "underlying_symbol": "UNDERLYING_SYMBOL",
}
_REQUIRED = ("exchange", "segment", "security_id", "instrument", "trading_symbol")

# "NIFTY-Nov2026-25800-CE", "BAJAJ-AUTO-Nov2026-FUT", "CRUDEOIL-19Nov2026-FUT": the underlying
# is whatever precedes the first "-<day?><Mon><YYYY>-".
_DERIVATIVE_SYMBOL = re.compile(r"^(?P<underlying>.+?)-\d{0,2}[A-Z][a-z]{2}\d{4}-")
_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d", "%d/%m/%y", "%d/%m/%Y", "%d-%m-%Y")
_NO_EXPIRY = {"", "0001-01-01", "NA", "0"}
_NO_STRIKE = {"", "-0.01", "-0.01000", "0", "NA"}


class MasterFormatError(ValueError):
    """The file is not a scrip master at all (no recognisable header)."""


@dataclass(frozen=True)
class RejectedRow:
    line_number: int
    reason: str


@dataclass
class ParseResult:
    records: list[InstrumentRecord] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    format_name: str = ""


def _header_map(header: list[str]) -> tuple[str, dict[str, int]]:
    names = {name.strip().lstrip("\ufeff"): index for index, name in enumerate(header)}
    for format_name, mapping in (("compact", _COMPACT), ("detailed", _DETAILED)):
        if all(mapping[f] in names for f in _REQUIRED):
            return format_name, {f: names[h] for f, h in mapping.items() if h in names}
    raise MasterFormatError(
        "unrecognised scrip-master header: expected Dhan's compact (SEM_* columns) or detailed "
        f"(EXCH_ID, SEGMENT, SECURITY_ID, ...) format, got {header[:6]}"
    )


def _parse_date(text: str) -> date | None:
    text = text.strip()
    if text in _NO_EXPIRY:
        return None
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ValueError(f"expiry {text!r} is not a date (expected YYYY-MM-DD[ HH:MM:SS] or dd/mm/yy)")


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None


def underlying_of(trading_symbol: str, instrument_type: str) -> str:
    if instrument_type in ("INDEX", "EQUITY"):
        return trading_symbol
    match = _DERIVATIVE_SYMBOL.match(trading_symbol)
    return match.group("underlying") if match else trading_symbol.split("-", 1)[0]


def _record(cells: list[str], columns: Mapping[str, int]) -> InstrumentRecord | str:
    """Builds a record, or returns why the row is rejected."""

    def cell(name: str) -> str:
        index = columns.get(name)
        return cells[index].strip() if index is not None and index < len(cells) else ""

    exchange = cell("exchange").upper()
    segment = MASTER_SEGMENTS.get((exchange, cell("segment").upper()))
    if segment is None:
        return f"unknown exchange/segment {exchange!r}/{cell('segment')!r}"
    instrument_type = cell("instrument").upper()
    if instrument_type not in INSTRUMENT_TYPES:
        return f"unknown instrument type {instrument_type!r}"
    trading_symbol = cell("trading_symbol")
    if not trading_symbol:
        return "empty trading symbol"
    if "NSETEST" in trading_symbol:
        return f"exchange test instrument {trading_symbol!r} skipped"
    try:
        security_id = int(_number(cell("security_id"), "security id"))
        if security_id <= 0:
            return f"security id {cell('security_id')!r} is not positive"
        lot_size = _number(cell("lot_size") or "1", "lot size")
        tick_raw = _number(cell("tick_size") or "0", "tick size")
        expiry = _parse_date(cell("expiry"))
        strike_text = cell("strike")
        strike = None if strike_text in _NO_STRIKE else _number(strike_text, "strike")
    except ValueError as error:
        return str(error)
    option_type = cell("option_type").upper()
    if instrument_type in OPTION_TYPES:
        if option_type not in ("CE", "PE"):
            return f"option with option type {option_type!r} (expected CE or PE)"
        if strike is None or strike <= 0:
            return f"option with strike {strike_text!r}"
        if expiry is None:
            return "option without an expiry date"
    else:
        option_type = ""
        strike = None
    underlying = cell("underlying_symbol") or underlying_of(trading_symbol, instrument_type)
    flag = cell("expiry_flag").upper()
    return InstrumentRecord(
        segment=segment,
        security_id=security_id,
        exchange=exchange,
        instrument_type=instrument_type,
        trading_symbol=trading_symbol,
        display_name=cell("display_name") or trading_symbol,
        underlying_symbol=underlying.upper(),
        lot_size=lot_size,
        # Dhan gives index ticks in rupees and everything else in paise.
        tick_size=tick_raw if instrument_type == "INDEX" else tick_raw / 100.0,
        expiry=expiry,
        expiry_flag=flag if flag in ("W", "M") and expiry is not None else "",
        strike=strike,
        option_type=option_type,
        series="" if cell("series") in ("NA",) else cell("series"),
    )


def parse_master(lines: Iterable[str], prices: Mapping[InstrumentId, float] | None = None) -> ParseResult:
    """Parses a master from text lines; `prices` fills previous closes when known."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise MasterFormatError("the scrip master is empty") from None
    format_name, columns = _header_map(header)
    result = ParseResult(format_name=format_name)
    seen: set[InstrumentId] = set()
    width = len(header)
    for cells in reader:
        line_number = reader.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if len(cells) != width:
            result.rejected.append(RejectedRow(line_number, f"{len(cells)} columns, expected {width}"))
            continue
        outcome = _record(cells, columns)
        if isinstance(outcome, str):
            result.rejected.append(RejectedRow(line_number, outcome))
            continue
        if outcome.key in seen:
            result.rejected.append(
                RejectedRow(line_number, f"duplicate instrument {outcome.segment} {outcome.security_id}")
            )
            continue
        seen.add(outcome.key)
        if prices:
            outcome.previous_close = prices.get(outcome.key)
        result.records.append(outcome)
    return result


def prices_sidecar(csv_path: Path) -> Path:
    """The previous-close sidecar beside a master: 'master.csv' -> 'master.prices.csv'."""
    return csv_path.with_name(csv_path.stem + ".prices.csv")


def parse_prices(lines: Iterable[str]) -> dict[InstrumentId, float]:
    """Reads the generator's sidecar (PRICES_HEADER)."""
    reader = csv.DictReader(lines)
    prices: dict[InstrumentId, float] = {}
    segment, security_id, previous_close = PRICES_HEADER
    for row in reader:
        try:
            prices[(row[segment], int(row[security_id]))] = float(row[previous_close])
        except (KeyError, ValueError, TypeError):
            continue
    return prices
