"""The one source of "now" for everything that follows the trading day.

Code that asks what time it is in market terms (is a session open, is a job due, what is
today's trading date) takes a `Clock` instead of calling `datetime.now`, so tests run a
whole trading day in seconds with a `ManualClock` and nothing is monkey-patched.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Protocol

from services.common.market_calendar import IST


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware datetime in IST."""
        ...


class WallClock:
    """The machine's clock, in IST: the exchange calendar's clock in production."""

    def now(self) -> datetime:
        return datetime.now(IST)


class ManualClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start.astimezone(IST)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        if delta < timedelta(0):
            raise ValueError("a clock does not go back")
        self._now += delta

    def set(self, at: datetime) -> None:
        self.advance(at.astimezone(IST) - self._now)


def trading_date_of(clock: Clock) -> date:
    """The calendar date in India on `clock`."""
    return clock.now().date()
