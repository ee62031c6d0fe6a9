"""When the automatic sweep re-centres a chain: hysteresis, a cooldown per chain, and only on
a fresh, positive live price.

The hysteresis rule. With strike step s and the chain centred on strike K, the ATM would
change at K ± s/2 (the midpoint between strikes). A chain re-centres only once the price is
beyond the midpoint by `hysteresis` steps:

    |price - K| > (0.5 + hysteresis) * s        (default hysteresis 0.6: |price - K| > 1.1 s)

Read this way, a re-centre leaves the price within half a step of the new ATM, so moving
back needs a swing of more than (1 + 2 * hysteresis) steps (2.2 by default): a price
wobbling around a midpoint never flaps the window, while the window is never more than
about one strike off centre. (The other reading, 0.6 of a step from K, leaves a swing of a
fifth of a step between two re-centres: a few index points.) A hysteresis of 0 re-centres
as soon as the ATM changes.

A chain centred on a previous close (before the underlying's first tick) re-centres on the
first live price whatever the hysteresis: the previous close is not where the market is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dataserver.registry.v1 import registry_pb2

from services.common.last_prices import LastQuote

PREVIOUS_CLOSE = str(registry_pb2.PRICE_SOURCE_PREVIOUS_CLOSE)

# Why the sweep left a chain where it is (the counts RecenterAllChains returns).
SKIP_NO_PRICE = "no_live_price"
SKIP_ZERO_PRICE = "zero_price"
SKIP_STALE_PRICE = "stale_price"
SKIP_COOLDOWN = "cooldown"


def beyond_hysteresis(price: float, centre: float | None, step: float | None, hysteresis: float) -> bool:
    """True once `price` is more than `hysteresis` steps past the midpoint next to `centre`."""
    if centre is None or not step:
        return True
    return abs(price - centre) > (0.5 + hysteresis) * step


def centred_on_previous_close(stored_price_source: str | None) -> bool:
    return stored_price_source == PREVIOUS_CLOSE


@dataclass
class RecenterPolicy:
    """`monotonic` times the cooldown (the market clock may be simulated and wrap), `wall`
    ages the feed's receive times (epoch seconds); both injectable for tests. The cooldown is
    this replica's memory: a restart forgets it, which costs at most one early re-centre."""

    hysteresis: float
    cooldown_seconds: float
    max_price_age_seconds: float
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _moved_at: dict[str, float] = field(default_factory=dict)

    def price_problem(self, quote: LastQuote | None) -> str | None:
        """Why `quote` may not centre a chain, or None when it may."""
        if quote is None:
            return SKIP_NO_PRICE
        if not quote.price > 0:
            return SKIP_ZERO_PRICE
        if quote.received_at is not None and self.wall() - quote.received_at > self.max_price_age_seconds:
            return SKIP_STALE_PRICE
        return None

    def cooling(self, owner: str) -> bool:
        """True while `owner` (a chain or unit) re-centred less than the cooldown ago."""
        moved = self._moved_at.get(owner)
        return moved is not None and self.monotonic() - moved < self.cooldown_seconds

    def moved(self, owner: str) -> None:
        self._moved_at[owner] = self.monotonic()
