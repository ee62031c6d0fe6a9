"""Instrument metadata the price models need (kind, underlying, strike, expiry, tick, lot,
previous close), loaded from a scrip master CSV and its prices sidecar, or from a master
generated on the fly."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Literal

from services.common.instruments import SEGMENT_WIRE_CODES
from services.common.keys import Key
from services.common.market_calendar import IST, today_ist
from services.dhan.generator import cached_master
from services.dhan.master import InstrumentRecord, parse_master, parse_prices, prices_sidecar

log = logging.getLogger(__name__)
Kind = Literal["index", "equity", "future", "option"]
# Which random walk drives an instrument: cash and index instruments of one symbol share it
# with their derivatives (NSE and BSE listings of a stock share a price, as in the master).
Asset = Literal["index", "stock", "commodity", "currency"]

_DERIVATIVE_ASSET: dict[str, Asset] = {
    "FUTIDX": "index", "OPTIDX": "index", "FUTSTK": "stock", "OPTSTK": "stock",
    "FUTCOM": "commodity", "OPTFUT": "commodity", "FUTCUR": "currency", "OPTCUR": "currency",
}  # fmt: skip
# Expiry time of day (IST): equity derivatives settle at the 15:30 close, MCX at 23:30.
_EXPIRY_TIME = {"MCX": time(23, 30)}
_DEFAULT_EXPIRY_TIME = time(15, 30)


@dataclass(frozen=True, slots=True)
class Contract:
    segment: str
    security_id: int
    kind: Kind
    asset: Asset
    symbol: str  # trading symbol
    underlying: str  # symbol of the walk that drives it (itself for cash and indices)
    tick: float  # rupees, > 0
    lot: int  # >= 1
    prev_close: float | None
    strike: float | None = None
    is_call: bool = False
    expiry: date | None = None
    expiry_ts: float | None = None  # UTC epoch seconds of the expiry's settlement time

    @property
    def key(self) -> Key:
        return (self.segment, self.security_id)

    @property
    def wire_segment(self) -> int:
        return SEGMENT_WIRE_CODES[self.segment]

    @property
    def is_derivative(self) -> bool:
        return self.kind in ("future", "option")


def _contract(record: InstrumentRecord) -> Contract | None:
    itype = record.instrument_type
    if itype == "INDEX":
        kind: Kind = "index"
        asset: Asset = "index"
    elif itype == "EQUITY":
        kind, asset = "equity", "stock"
    elif itype in _DERIVATIVE_ASSET:
        kind = "option" if record.is_option else "future"
        asset = _DERIVATIVE_ASSET[itype]
    else:
        return None
    expiry_ts = None
    if record.expiry is not None:
        at = datetime.combine(record.expiry, _EXPIRY_TIME.get(record.exchange, _DEFAULT_EXPIRY_TIME), IST)
        expiry_ts = at.timestamp()
    if kind == "option" and (record.strike is None or expiry_ts is None):
        return None
    tick = record.tick_size if record.tick_size > 0 else 0.05
    prev = record.previous_close if record.previous_close and record.previous_close > 0 else None
    return Contract(
        segment=record.segment,
        security_id=record.security_id,
        kind=kind,
        asset=asset,
        symbol=record.trading_symbol,
        underlying=record.underlying_symbol if kind in ("future", "option") else record.trading_symbol,
        tick=tick,
        lot=max(1, round(record.lot_size)),
        prev_close=prev,
        strike=record.strike,
        is_call=record.option_type == "CE",
        expiry=record.expiry,
        expiry_ts=expiry_ts,
    )


class Catalog:
    """Contracts by (segment, security id), plus the look-ups the price models need."""

    def __init__(self, contracts: Iterable[Contract], trading_date: date | None = None) -> None:
        self.trading_date = trading_date or today_ist()
        self._by_key: dict[Key, Contract] = {}
        self._spots: dict[tuple[Asset, str], Contract] = {}
        self._futures: dict[tuple[Asset, str], list[Contract]] = {}
        for c in contracts:
            self._by_key[c.key] = c
            if c.kind in ("index", "equity"):
                # Prefer NSE's listing of a stock (its derivatives trade on NSE).
                prior = self._spots.get((c.asset, c.symbol))
                if prior is None or (prior.segment != "NSE_EQ" and c.segment == "NSE_EQ"):
                    self._spots[(c.asset, c.symbol)] = c
            elif c.kind == "future":
                self._futures.setdefault((c.asset, c.underlying), []).append(c)
        for futures in self._futures.values():
            futures.sort(key=lambda f: f.expiry_ts or 0.0)

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, key: Key) -> Contract | None:
        return self._by_key.get(key)

    def contracts(self) -> Iterable[Contract]:
        return self._by_key.values()

    def spot(self, asset: Asset, symbol: str) -> Contract | None:
        return self._spots.get((asset, symbol))

    def futures(self, asset: Asset, underlying: str) -> list[Contract]:
        """Futures of an underlying, nearest expiry first."""
        return self._futures.get((asset, underlying), [])

    def future_for_option(self, option: Contract) -> Contract | None:
        """The future an MCX option is written on: the first expiring on or after it."""
        for future in self.futures(option.asset, option.underlying):
            if future.expiry_ts is not None and option.expiry_ts is not None and future.expiry_ts >= option.expiry_ts:
                return future
        return None

    @classmethod
    def from_records(cls, records: Iterable[InstrumentRecord], trading_date: date | None = None) -> Catalog:
        contracts = (c for c in map(_contract, records) if c is not None)
        return cls(contracts, trading_date)

    @classmethod
    def load(cls, master_path: Path, prices_path: Path | None = None, trading_date: date | None = None) -> Catalog:
        """Parses a master CSV; prices come from ``prices_path`` or the sidecar next to it."""
        if prices_path is None:
            sidecar = prices_sidecar(master_path)
            prices_path = sidecar if sidecar.is_file() else None
        prices = None
        if prices_path is not None:
            with prices_path.open(newline="", encoding="utf-8") as fh:
                prices = parse_prices(fh)
        with master_path.open(newline="", encoding="utf-8") as fh:
            result = parse_master(fh, prices)
        if result.rejected:
            log.info("master rows rejected", extra={"rejected": len(result.rejected), "path": str(master_path)})
        catalog = cls.from_records(result.records, trading_date)
        log.info(
            "master loaded",
            extra={"path": str(master_path), "instruments": len(catalog), "prices": prices_path is not None},
        )
        return catalog

    @classmethod
    def generated(cls, cache_dir: Path | None, seed: int, scale: str, trading_date: date | None = None) -> Catalog:
        """Generates today's master (cached by cached_master under ``cache_dir``)."""
        trading_date = trading_date or today_ist()
        if cache_dir is None:
            with tempfile.TemporaryDirectory(prefix="feed-sim-master-") as tmp:
                path = cached_master(Path(tmp), trading_date, seed, scale)
                return cls.load(path, prices_sidecar(path), trading_date)
        path = cached_master(cache_dir, trading_date, seed, scale)
        return cls.load(path, prices_sidecar(path), trading_date)
