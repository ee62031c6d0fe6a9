"""When jobs fire: APScheduler 3 triggers in IST, filtered by the trading calendar.

Only fire times are taken from APScheduler; running, recording and exactly-once live in this
package (the job store is Postgres, the clock is injected), so a test drives a whole day
with a `ManualClock`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Protocol

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from services.common.market_calendar import IST

_TICK = timedelta(microseconds=1)
_MAX_STEPS = 400  # cron candidates skipped over holidays before giving up (more than a year)


class Schedule(Protocol):
    def next_fire(self, at: datetime) -> datetime | None:
        """The first fire time at or after `at`; None when there is none."""
        ...

    def describe(self) -> str: ...


def last_fire(schedule: Schedule, at: datetime, within: timedelta) -> datetime | None:
    """The latest fire time in (at - within, at]: the one a job may still owe."""
    latest = None
    candidate = schedule.next_fire(at - within + _TICK)
    while candidate is not None and candidate <= at:
        latest = candidate
        candidate = schedule.next_fire(candidate + _TICK)
    return latest


@dataclass(frozen=True)
class DailyAt:
    """A time of day in IST on the days `accept` takes (trading days, US seasons)."""

    at: time
    accept: Callable[[datetime], bool]
    note: str = "on trading days"

    @property
    def trigger(self) -> CronTrigger:
        return CronTrigger(hour=self.at.hour, minute=self.at.minute, day_of_week="mon-fri", timezone=IST)

    def next_fire(self, at: datetime) -> datetime | None:
        trigger = self.trigger
        candidate: datetime | None = trigger.get_next_fire_time(None, at)
        for _ in range(_MAX_STEPS):
            if candidate is None or self.accept(candidate):
                return candidate
            candidate = trigger.get_next_fire_time(None, candidate + _TICK)
        return None

    def describe(self) -> str:
        return f"{self.at.minute} {self.at.hour} * * 1-5 (IST, {self.note})"


@dataclass(frozen=True)
class AnyOf:
    """The earliest of several schedules, e.g. the MCX close in each US season."""

    parts: tuple[Schedule, ...]

    def next_fire(self, at: datetime) -> datetime | None:
        fires = [f for f in (p.next_fire(at) for p in self.parts) if f is not None]
        return min(fires, default=None)

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.parts)


@dataclass(frozen=True)
class Window:
    """Hours of a day in IST, on the days `is_day` takes; the close may depend on the day."""

    opens: time
    closes: Callable[[date], time]
    is_day: Callable[[date], bool]

    def bounds(self, day: date) -> tuple[datetime, datetime]:
        return datetime.combine(day, self.opens, IST), datetime.combine(day, self.closes(day), IST)

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(IST)
        start, end = self.bounds(local.date())
        return self.is_day(local.date()) and start <= local < end

    def next_open(self, at: datetime) -> datetime | None:
        """`at` when inside, else the next opening."""
        if self.contains(at):
            return at
        day = at.astimezone(IST).date()
        for _ in range(_MAX_STEPS):
            start, _end = self.bounds(day)
            if self.is_day(day) and start >= at:
                return start
            day += timedelta(days=1)
        return None


@dataclass(frozen=True)
class Every:
    """Every `seconds` inside a window (market hours); not tied to a date."""

    seconds: float
    window: Window

    def next_fire(self, at: datetime) -> datetime | None:
        opening = self.window.next_open(at)
        if opening is None:
            return None
        start, _end = self.window.bounds(opening.astimezone(IST).date())
        trigger = IntervalTrigger(seconds=self.seconds, start_date=start, timezone=IST)
        fire: datetime | None = trigger.get_next_fire_time(None, opening)
        if fire is not None and not self.window.contains(fire):
            return self.next_fire(self.window.bounds(fire.date())[1] + _TICK)
        return fire

    def describe(self) -> str:
        return f"every {self.seconds:g} s from {self.window.opens:%H:%M} to the MCX close (IST, on trading days)"
