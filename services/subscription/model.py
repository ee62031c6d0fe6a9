"""The subscription service's vocabulary."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime

from dataserver.registry.v1 import registry_pb2

from services.common.keys import Key

OWNER_UNIT = "unit"
OWNER_TIER_B = "tier_b"

# The advisory lock that serialises the ledger's writers on every replica; readers that need
# rows and change version to agree take it shared.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"dataserver.subscriptions").digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class Budget:
    connections: int
    per_connection: int

    @property
    def capacity(self) -> int:
        return self.connections * self.per_connection


@dataclass(frozen=True)
class Instrument:
    key: Key
    trading_symbol: str


@dataclass(frozen=True)
class ResolvedUnit:
    """What a watchlist item or Tier B chain subscribes: the underlying, its window, and the
    future listed for the expiry (the chain's forward; it stays put when the window moves)."""

    symbol: str
    underlying: Instrument
    underlying_type: str
    expiry: date | None
    atm_strike: float | None
    strike_step: float | None
    underlying_price: float | None
    price_source: registry_pb2.PriceSource
    strikes_each_side: int
    options: tuple[Instrument, ...] = ()
    future: Instrument | None = None

    def instruments(self, include_underlying: bool = True) -> list[Instrument]:
        """Each instrument once: a commodity's future is its underlying too, so it comes (or not)
        with the underlying."""
        chosen = [self.underlying, *self.options] if include_underlying else list(self.options)
        if self.future is not None and self.future.key != self.underlying.key:
            chosen.append(self.future)
        return chosen


@dataclass(frozen=True)
class Eviction:
    item_id: int
    user_id: str
    symbol: str
    expiry: date | None
    reason: str  # CAPACITY, TIER_B_PLAN, RECENTER, END_OF_DAY, ADMIN, EXPIRED
    message: str
    released: int
    last_used_at: datetime


@dataclass
class AcquireOutcome:
    subscribed: list[Key] = field(default_factory=list)
    evictions: list[Eviction] = field(default_factory=list)
