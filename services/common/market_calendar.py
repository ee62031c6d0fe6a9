"""Indian exchange trading calendars and sessions: trading days per exchange, market phases.

Pure functions over dates, no I/O after import. Two calendars: NSE (which BSE shares, for
equity, equity derivatives and the indices) and MCX (its own holidays, most of them with the
evening session open). The holidays are data, in holidays.csv beside this module (or the file
MARKET_HOLIDAYS_FILE names, e.g. a mounted Kubernetes ConfigMap), read and validated once at
import: a malformed line fails the import naming the line.
"""

from __future__ import annotations

import calendar
import csv
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal
from zoneinfo import ZoneInfo

IST: Final = ZoneInfo("Asia/Kolkata")

MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY, SATURDAY, SUNDAY = range(7)

CalendarName = Literal["NSE", "MCX"]
Closure = Literal["day", "morning"]  # "morning": MCX trades only its evening session

# Read here rather than in config.py: the calendar is module data, loaded before any Settings.
HOLIDAYS_FILE: Final = Path(os.environ.get("MARKET_HOLIDAYS_FILE") or Path(__file__).resolve().parent / "holidays.csv")
_HOLIDAY_HEADER: Final = ["calendar", "date", "closed", "name"]


class HolidayFileError(ValueError):
    """A line of the holidays file that cannot be used; the message names the line."""


def today_ist() -> date:
    """The calendar date in India now; the server clock may be on UTC."""
    return datetime.now(IST).date()


# --- holidays -------------------------------------------------------------------------


def _holiday_line(where: str, fields: list[str], seen: set[tuple[str, date]]) -> tuple[CalendarName, date, Closure]:
    if len(fields) != 4:
        raise HolidayFileError(f"{where}: expected 4 fields (calendar,date,closed,name), got {len(fields)}")
    name, day_text, closed, label = (f.strip() for f in fields)
    if name not in ("NSE", "MCX"):
        raise HolidayFileError(f"{where}: calendar {name!r} is not NSE or MCX")
    try:
        day = date.fromisoformat(day_text)
    except ValueError:
        raise HolidayFileError(f"{where}: date {day_text!r} is not YYYY-MM-DD") from None
    if day.weekday() >= SATURDAY:
        raise HolidayFileError(f"{where}: {day} is a weekend day; only weekday holidays belong here")
    if closed not in ("day", "morning"):
        raise HolidayFileError(f"{where}: closed {closed!r} is not 'day' or 'morning'")
    if closed == "morning" and name != "MCX":
        raise HolidayFileError(f"{where}: only MCX has an evening session to keep open")
    if not label:
        raise HolidayFileError(f"{where}: the holiday needs a name")
    if (name, day) in seen:
        raise HolidayFileError(f"{where}: {name} {day} is listed twice")
    seen.add((name, day))
    return ("NSE" if name == "NSE" else "MCX"), day, ("day" if closed == "day" else "morning")


def parse_holidays(text: str, source: str = "holidays.csv") -> dict[CalendarName, dict[date, Closure]]:
    """The holidays file's lines by calendar; '#' lines and blank lines are comments."""
    out: dict[CalendarName, dict[date, Closure]] = {"NSE": {}, "MCX": {}}
    seen: set[tuple[str, date]] = set()
    header_seen = False
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([line]))
        if not header_seen:
            if [f.strip() for f in fields] != _HOLIDAY_HEADER:
                raise HolidayFileError(f"{source}:{number}: expected the header {','.join(_HOLIDAY_HEADER)}")
            header_seen = True
            continue
        name, day, closed = _holiday_line(f"{source}:{number}", fields, seen)
        out[name][day] = closed
    if not header_seen:
        raise HolidayFileError(f"{source}: no header line {','.join(_HOLIDAY_HEADER)}")
    return out


_HOLIDAYS: Final = {
    name: MappingProxyType(days)
    for name, days in parse_holidays(HOLIDAYS_FILE.read_text(encoding="utf-8"), HOLIDAYS_FILE.name).items()
}
NSE_HOLIDAYS: Final[frozenset[date]] = frozenset(_HOLIDAYS["NSE"])
# MCX days with no session at all; days listed "morning" still trade in the evening.
MCX_CLOSED_DAYS: Final[frozenset[date]] = frozenset(d for d, c in _HOLIDAYS["MCX"].items() if c == "day")
MCX_EVENING_ONLY_DAYS: Final[frozenset[date]] = frozenset(d for d, c in _HOLIDAYS["MCX"].items() if c == "morning")
# Years the file covers. Outside them the days India always closes on are assumed (far
# expiries are listed years ahead): (month, day, how MCX observes it).
HOLIDAY_YEARS: Final = frozenset(d.year for d in NSE_HOLIDAYS)
_FIXED_DATE_HOLIDAYS: Final[Mapping[tuple[int, int], Closure]] = MappingProxyType(
    {(1, 26): "day", (5, 1): "morning", (8, 15): "day", (10, 2): "day", (12, 25): "day"}
)

# Which calendar each exchange or Dhan exchange segment follows.
_CALENDARS: Final[Mapping[str, CalendarName]] = MappingProxyType(
    {
        "NSE": "NSE", "BSE": "NSE", "MCX": "MCX", "IDX_I": "NSE", "NSE_EQ": "NSE", "NSE_FNO": "NSE",
        "NSE_CURRENCY": "NSE", "BSE_EQ": "NSE", "BSE_FNO": "NSE", "BSE_CURRENCY": "NSE", "MCX_COMM": "MCX",
    }
)  # fmt: skip


def calendar_of(exchange: str) -> CalendarName:
    """'NSE', 'BSE', 'MCX' or a Dhan exchange segment ('NSE_FNO', 'IDX_I', ...) -> its calendar."""
    try:
        return _CALENDARS[exchange.upper()]
    except KeyError:
        raise ValueError(f"unknown exchange {exchange!r}; expected one of {sorted(_CALENDARS)}") from None


def _closure(name: CalendarName, d: date) -> Closure | None:
    """How a weekday is closed on a calendar: the file's line, else a fixed-date holiday of
    a year the file does not list, else None (it trades)."""
    if d.year in HOLIDAY_YEARS:
        return _HOLIDAYS[name].get(d)
    closure = _FIXED_DATE_HOLIDAYS.get((d.month, d.day))
    return "day" if closure is not None and name == "NSE" else closure


def is_trading_day(d: date, exchange: str = "NSE") -> bool:
    """A weekday the exchange trades on (for MCX, any session, evening-only included)."""
    return d.weekday() < SATURDAY and _closure(calendar_of(exchange), d) != "day"


def is_mcx_trading_day(d: date) -> bool:
    return is_trading_day(d, "MCX")


def previous_trading_day(d: date, exchange: str = "NSE") -> date:
    """The last trading day strictly before d."""
    d -= timedelta(days=1)
    while not is_trading_day(d, exchange):
        d -= timedelta(days=1)
    return d


def next_trading_day(d: date, exchange: str = "NSE") -> date:
    """The first trading day strictly after d."""
    d += timedelta(days=1)
    while not is_trading_day(d, exchange):
        d += timedelta(days=1)
    return d


def on_or_before_trading_day(d: date, exchange: str = "NSE") -> date:
    """d if it trades, else the previous trading day: how exchanges move an expiry."""
    return d if is_trading_day(d, exchange) else previous_trading_day(d, exchange)


def last_weekday_of_month(year: int, month: int, weekday: int) -> date:
    """The last `weekday` (0=Monday) of the month, before any holiday shift."""
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def nth_weekday_of_month(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th (1-based) `weekday` of the month."""
    first = date(year, month, 1)
    return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


# --- sessions -------------------------------------------------------------------------


class Phase(StrEnum):
    PRE_OPEN = "pre-open"
    OPEN = "open"
    CLOSED = "closed"  # a trading day, outside its session
    HOLIDAY = "holiday"  # not a trading day (weekend or listed holiday)


NSE_PRE_OPEN: Final = time(9, 0)
NSE_OPEN: Final = time(9, 15)
NSE_CLOSE: Final = time(15, 30)
BSE_PRE_OPEN, BSE_OPEN, BSE_CLOSE = NSE_PRE_OPEN, NSE_OPEN, NSE_CLOSE
CURRENCY_OPEN: Final = time(9, 0)
CURRENCY_CLOSE: Final = time(17, 0)
MCX_OPEN: Final = time(9, 0)
MCX_EVENING_OPEN: Final = time(17, 0)
# MCX closes its energy and metal contracts at 23:30 while the US is on daylight saving time
# and at 23:55 while it is on standard time (the NYMEX/COMEX hours they follow).
MCX_CLOSE: Final = time(23, 30)
MCX_CLOSE_US_WINTER: Final = time(23, 55)


def us_on_standard_time(d: date) -> bool:
    """From the first Sunday of November to the second Sunday of March (US rule since 2007).
    The switches happen at 02:00 US time on a Sunday, when Indian markets are shut, so the
    date alone decides a trading day's close."""
    return d >= nth_weekday_of_month(d.year, 11, SUNDAY, 1) or d < nth_weekday_of_month(d.year, 3, SUNDAY, 2)


def mcx_close(d: date) -> time:
    return MCX_CLOSE_US_WINTER if us_on_standard_time(d) else MCX_CLOSE


@dataclass(frozen=True)
class Session:
    """A trading day's session in IST: [pre_open, open) call auction, [open, close) trading."""

    pre_open: time | None
    open: time
    close: time


def session_on(exchange: str, d: date) -> Session | None:
    """The session of an exchange or Dhan segment on d; None when d is not a trading day."""
    if not is_trading_day(d, exchange):
        return None
    name = exchange.upper()
    if calendar_of(name) == "MCX":
        evening_only = _closure("MCX", d) == "morning"
        return Session(None, MCX_EVENING_OPEN if evening_only else MCX_OPEN, mcx_close(d))
    if name.endswith("_CURRENCY"):
        return Session(None, CURRENCY_OPEN, CURRENCY_CLOSE)
    return Session(NSE_PRE_OPEN, NSE_OPEN, NSE_CLOSE)


def _day_marks(exchange: str, d: date) -> list[tuple[time, Phase]]:
    """The phases of day d, each with the time it starts, in order."""
    session = session_on(exchange, d)
    if session is None:
        return [(time(0), Phase.HOLIDAY)]
    marks = [(time(0), Phase.CLOSED)]
    if session.pre_open is not None:
        marks.append((session.pre_open, Phase.PRE_OPEN))
    return [*marks, (session.open, Phase.OPEN), (session.close, Phase.CLOSED)]


def _as_ist(at: datetime) -> datetime:
    """Naive datetimes are taken to be IST already."""
    return at.replace(tzinfo=IST) if at.tzinfo is None else at.astimezone(IST)


# No exchange closes for longer than this; past it the calendar itself is broken.
_MAX_CLOSED_DAYS: Final = 30


def market_phase(exchange: str, at: datetime) -> tuple[Phase, datetime]:
    """The phase of an exchange or Dhan segment at `at` and the instant (IST) it next changes.

    `next_change_at` is the first instant after `at` at which this function returns another
    phase: a holiday's is the midnight starting the next trading day (then 'closed' until
    the pre-open or open), a Friday close's is Saturday midnight (then 'holiday').
    """
    local = _as_ist(at)
    day, now = local.date(), local.time()
    marks = _day_marks(exchange, day)
    current = [phase for start, phase in marks if start <= now][-1]
    later = [(start, phase) for start, phase in marks if start > now]
    for _ in range(_MAX_CLOSED_DAYS):
        for start, phase in later:
            if phase != current:
                return current, datetime.combine(day, start, IST)
        day += timedelta(days=1)
        later = _day_marks(exchange, day)
    raise AssertionError(f"{exchange} has no phase change within {_MAX_CLOSED_DAYS} days of {local}")


def is_market_open(exchange: str, at: datetime) -> bool:
    """Continuous trading session, [open, close) in IST, on trading days."""
    return market_phase(exchange, at)[0] is Phase.OPEN


def is_pre_open(exchange: str, at: datetime) -> bool:
    """NSE/BSE equity pre-open call auction, 09:00-09:15 IST; MCX and currencies have none."""
    return market_phase(exchange, at)[0] is Phase.PRE_OPEN
