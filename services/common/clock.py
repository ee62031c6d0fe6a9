"""The one source of "now" for everything that follows the trading day.

Code that asks what time it is in market terms (is a session open, is a job due, what is
today's trading date) takes a `Clock` instead of calling `datetime.now`, so tests run a
whole trading day in seconds with a `ManualClock` and nothing is monkey-patched.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Final, Protocol

from services.common.config import Settings
from services.common.market_calendar import IST, NSE_CLOSE, NSE_OPEN, on_or_before_trading_day


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


_SESSION: Final = timedelta(hours=NSE_CLOSE.hour - NSE_OPEN.hour, minutes=NSE_CLOSE.minute - NSE_OPEN.minute)


class SimulatedSessionClock:
    """A clock that is always inside an open NSE session of a trading day (`make run`), so a
    development stack preloads, ticks and re-centres whatever the hour.

    Mapping, from the wall clock in IST (`wall`, real time):
    - the date is the trading day on or before wall's date (a Saturday maps to Friday, a
      holiday to the day before it);
    - the time of day is 09:15 + ((wall's time of day - 09:15) mod 6h15m), so it runs in
      real time through [09:15, 15:30) and wraps from 15:30 back to 09:15, at wall times
      09:15, 15:30, 21:45 and 04:00 (and at midnight, when the date changes). During a real
      session on a trading day it equals the wall clock.

    Every process computes the same instant from the same wall clock. now() steps back at a
    wrap: measure intervals with time.monotonic(), not with a Clock.
    """

    def __init__(self, wall: Clock | None = None) -> None:
        self._wall = wall or WallClock()

    def now(self) -> datetime:
        wall = self._wall.now().astimezone(IST)
        day = on_or_before_trading_day(wall.date())
        since_open = wall - datetime.combine(wall.date(), NSE_OPEN, IST)
        into_session = since_open % _SESSION
        return datetime.combine(day, NSE_OPEN, IST) + into_session


def clock_from_settings(settings: Settings) -> Clock:
    """MARKET_CLOCK: 'simulated' (default, `make run`) or 'exchange' (the wall clock, k8s)."""
    return WallClock() if settings.market_clock == "exchange" else SimulatedSessionClock()


def trading_date_of(clock: Clock) -> date:
    """The calendar date in India on `clock`."""
    return clock.now().date()
