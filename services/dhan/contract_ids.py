"""Security ids of generated derivative contracts: a function of the contract, not of the day.

Dhan gives a contract one security id for its whole life and never gives that id to another
contract. The generator has no memory between days, so it computes the id from the contract
itself, (underlying, expiry, strike, future/CE/PE), with a mixed-radix layout that is
injective by construction (every digit is range-checked) and independent of the trading date:

    daily block (indices and MCX; any expiry day), from 1,000,000:
        1_000_000 + ((underlying_code * 8192 + days since 2024-01-01) * 2048 + k) * 3 + kind
    monthly block (stocks; one expiry a month, so the month names it), from 500,000,000:
        500_000_000 + ((stock_code * 128 + months since 2024-01) * 1024 + k) * 3 + kind

kind: 0 future, 1 call, 2 put; k: 0 for a future, else strike / the underlying's strike
unit (an index's or commodity's listed step, a stock's step in its grid). The blocks end at
403,653,184 and 902,653,184, disjoint, above every real id (below 1,000,000) and inside the
int32 Dhan's depth packets carry. Expiries run to 2046 (daily) and 2034 (monthly).

Underlying codes are allocated, never recomputed: the indices and commodities below, and the
stocks in seed/stock-contract-codes.csv (keyed by the stock's NSE_EQ security id, which
survives renames). A new F&O stock is appended there with the next free code; a code is
never changed or reused.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

DAILY_BLOCK_START: Final = 1_000_000
MONTHLY_BLOCK_START: Final = 500_000_000
ID_ORIGIN: Final = date(2024, 1, 1)
DAYS: Final = 8192
MONTHS: Final = 128
DAILY_STRIKES: Final = 2048
MONTHLY_STRIKES: Final = 1024
STOCK_CODES: Final = 1024
KINDS: Final = 3

Kind = Literal["FUT", "CE", "PE"]
_KIND_DIGIT: Final[Mapping[str, int]] = MappingProxyType({"FUT": 0, "CE": 1, "PE": 2})

# (code, strike unit) of every daily-block underlying; append only.
DAILY_UNDERLYINGS: Final[Mapping[str, tuple[int, float]]] = MappingProxyType(
    {
        "NIFTY": (0, 50.0), "BANKNIFTY": (1, 100.0), "FINNIFTY": (2, 50.0), "MIDCPNIFTY": (3, 25.0),
        "SENSEX": (4, 100.0), "BANKEX": (5, 100.0), "CRUDEOIL": (6, 50.0), "NATURALGAS": (7, 5.0),
    }
)  # fmt: skip
STOCK_CODES_CSV: Final = Path(__file__).resolve().parent / "seed" / "stock-contract-codes.csv"

DAILY_BLOCK_END: Final = DAILY_BLOCK_START + len(DAILY_UNDERLYINGS) * DAYS * DAILY_STRIKES * KINDS
MONTHLY_BLOCK_END: Final = MONTHLY_BLOCK_START + STOCK_CODES * MONTHS * MONTHLY_STRIKES * KINDS
assert DAILY_BLOCK_END <= MONTHLY_BLOCK_START and MONTHLY_BLOCK_END < 2**31


def _digit(value: int, size: int, what: str) -> int:
    if not 0 <= value < size:
        raise ValueError(f"{what} {value} is outside 0..{size - 1} of the contract-id layout")
    return value


def _strike_digit(kind: Kind, strike: float | None, unit: float, size: int, underlying: str) -> int:
    if kind == "FUT":
        return 0
    if strike is None:
        raise ValueError(f"{underlying}: an option needs a strike")
    steps = strike / unit
    if not steps.is_integer() or steps < 1:
        raise ValueError(f"{underlying}: strike {strike} is not a positive multiple of its unit {unit}")
    return _digit(int(steps), size, f"{underlying} strike/unit")


def load_stock_codes(path: Path = STOCK_CODES_CSV) -> dict[int, int]:
    """NSE_EQ security id -> stock code; duplicate ids or codes fail naming the line."""
    codes: dict[int, int] = {}
    used: set[int] = set()
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        if next(reader) != ["underlying_security_id", "symbol", "code"]:
            raise ValueError(f"{path.name}:1: expected the header underlying_security_id,symbol,code")
        for number, row in enumerate(reader, start=2):
            sid, code = int(row[0]), _digit(int(row[2]), STOCK_CODES, f"{path.name}:{number}: code")
            if sid in codes or code in used:
                raise ValueError(f"{path.name}:{number}: security id {sid} or code {code} is allocated twice")
            codes[sid] = code
            used.add(code)
    return codes


@dataclass(frozen=True)
class ContractIds:
    """The ids of one underlying's contracts."""

    underlying: str
    monthly: bool  # stock layout: the expiry month names the contract
    code: int
    unit: float

    @classmethod
    def daily(cls, underlying: str) -> ContractIds:
        code, unit = DAILY_UNDERLYINGS[underlying]
        return cls(underlying, False, code, unit)

    @classmethod
    def stock(cls, symbol: str, security_id: int, step: float, codes: Mapping[int, int]) -> ContractIds:
        if security_id not in codes:
            raise ValueError(
                f"F&O stock {symbol} (NSE_EQ {security_id}) has no contract-id code; "
                f"append it to {STOCK_CODES_CSV.name}"
            )
        return cls(symbol, True, codes[security_id], step)

    def of(self, expiry: date, kind: Kind, strike: float | None = None) -> int:
        """The security id of (this underlying, expiry, strike, kind)."""
        if self.monthly:
            month = (expiry.year - ID_ORIGIN.year) * 12 + expiry.month - ID_ORIGIN.month
            k = _strike_digit(kind, strike, self.unit, MONTHLY_STRIKES, self.underlying)
            slot = (self.code * MONTHS + _digit(month, MONTHS, "expiry month")) * MONTHLY_STRIKES + k
            return MONTHLY_BLOCK_START + slot * KINDS + _KIND_DIGIT[kind]
        day = _digit((expiry - ID_ORIGIN).days, DAYS, "expiry day")
        k = _strike_digit(kind, strike, self.unit, DAILY_STRIKES, self.underlying)
        return DAILY_BLOCK_START + ((self.code * DAYS + day) * DAILY_STRIKES + k) * KINDS + _KIND_DIGIT[kind]
