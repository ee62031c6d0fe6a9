"""The registry's in-memory instrument record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from services.common.instruments import FUTURE_TYPES, OPTION_TYPES

InstrumentId = tuple[str, int]  # (Dhan segment name, security id)


@dataclass(slots=True)
class InstrumentRecord:
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
