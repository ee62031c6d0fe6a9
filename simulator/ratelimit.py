"""Token bucket for packet rates (per connection and for the whole simulator)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, holding at most ``capacity`` (the allowed burst).

    ``take`` grants up to what is available and may let the balance go slightly negative
    (``spend`` after the fact), so a caller that overshoots by one packet pays it back."""

    __slots__ = ("_clock", "_t", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, capacity: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        # Default burst: 50 ms worth, at least one packet.
        self.capacity = max(1.0, capacity if capacity is not None else rate * 0.05)
        self._tokens = self.capacity
        self._clock = clock
        self._t = clock()

    def _refill(self) -> float:
        now = self._clock()
        tokens = self._tokens + (now - self._t) * self.rate
        self._t = now
        self._tokens = tokens if tokens < self.capacity else self.capacity
        return self._tokens

    def available(self) -> float:
        return self._refill()

    def take(self, want: int, limit: float | None = None) -> int:
        """Grants min(want, available tokens, limit) whole tokens."""
        tokens = self._refill()
        if limit is not None and limit < tokens:
            tokens = limit
        granted = min(want, int(tokens)) if tokens > 0 else 0
        self._tokens -= granted
        return granted

    def spend(self, n: float) -> None:
        """Charges n tokens unconditionally (overshoot, or a refund when negative)."""
        self._tokens -= n
