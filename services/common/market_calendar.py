"""Indian exchange trading calendar: trading days, derivative expiries, market hours.

Pure functions over dates, no I/O. Holiday lists are the published NSE lists (BSE
publishes the same dates for equity and derivatives); they must be extended every
December when NSE publishes the next year's list.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from types import MappingProxyType
from typing import Final, Literal
from zoneinfo import ZoneInfo

IST: Final = ZoneInfo("Asia/Kolkata")

MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY = range(5)

ExpiryFlag = Literal["W", "M"]


def today_ist() -> date:
    """The calendar date in India now; the server clock may be on UTC."""
    return datetime.now(IST).date()


# Weekday holidays only (weekend holidays change nothing). Sources: NSE circulars for
# 2025 and 2026, including the 2026-01-15 closure for the Maharashtra municipal polls
# that NSE added in January 2026.
_HOLIDAYS_2025: Final = (
    date(2025, 2, 26),  # Mahashivratri
    date(2025, 3, 14),  # Holi
    date(2025, 3, 31),  # Id-ul-Fitr
    date(2025, 4, 10),  # Shri Mahavir Jayanti
    date(2025, 4, 14),  # Dr. Baba Saheb Ambedkar Jayanti
    date(2025, 4, 18),  # Good Friday
    date(2025, 5, 1),  # Maharashtra Day
    date(2025, 8, 15),  # Independence Day
    date(2025, 8, 27),  # Ganesh Chaturthi
    date(2025, 10, 2),  # Mahatma Gandhi Jayanti / Dussehra
    date(2025, 10, 21),  # Diwali Laxmi Pujan (only the evening muhurat session trades)
    date(2025, 10, 22),  # Diwali Balipratipada
    date(2025, 11, 5),  # Prakash Gurpurb Sri Guru Nanak Dev
    date(2025, 12, 25),  # Christmas
)
_HOLIDAYS_2026: Final = (
    date(2026, 1, 15),  # Municipal Corporation elections in Maharashtra
    date(2026, 1, 26),  # Republic Day
    date(2026, 3, 3),  # Holi
    date(2026, 3, 26),  # Shri Ram Navami
    date(2026, 3, 31),  # Shri Mahavir Jayanti
    date(2026, 4, 3),  # Good Friday
    date(2026, 4, 14),  # Dr. Baba Saheb Ambedkar Jayanti
    date(2026, 5, 1),  # Maharashtra Day
    date(2026, 5, 28),  # Bakri Id
    date(2026, 6, 26),  # Muharram
    date(2026, 9, 14),  # Ganesh Chaturthi
    date(2026, 10, 2),  # Mahatma Gandhi Jayanti
    date(2026, 10, 20),  # Dussehra
    date(2026, 11, 10),  # Diwali Balipratipada
    date(2026, 11, 24),  # Prakash Gurpurb Sri Guru Nanak Dev
    date(2026, 12, 25),  # Christmas
)
# PROVISIONAL: NSE publishes 2027 in December 2026. These are the expected festival
# dates that fall on weekdays (lunar festivals may move by a day); replace them with
# the circular's list when it is out.
_HOLIDAYS_2027: Final = (
    date(2027, 1, 26),  # Republic Day
    date(2027, 3, 10),  # Id-ul-Fitr (expected)
    date(2027, 3, 22),  # Holi (expected)
    date(2027, 3, 26),  # Good Friday
    date(2027, 4, 14),  # Dr. Baba Saheb Ambedkar Jayanti
    date(2027, 4, 15),  # Shri Ram Navami (expected)
    date(2027, 4, 20),  # Shri Mahavir Jayanti (expected)
    date(2027, 5, 17),  # Bakri Id (expected)
    date(2027, 6, 15),  # Muharram (expected)
    date(2027, 10, 29),  # Diwali Laxmi Pujan (expected)
)

NSE_HOLIDAYS: Final[frozenset[date]] = frozenset(_HOLIDAYS_2025 + _HOLIDAYS_2026 + _HOLIDAYS_2027)
HOLIDAY_YEARS: Final = frozenset({2025, 2026, 2027})


def is_trading_day(d: date) -> bool:
    """NSE/BSE trading day. Outside HOLIDAY_YEARS only weekends are known closures."""
    return d.weekday() < 5 and d not in NSE_HOLIDAYS


def previous_trading_day(d: date) -> date:
    """The last trading day strictly before d."""
    d -= timedelta(days=1)
    while not is_trading_day(d):
        d -= timedelta(days=1)
    return d


def next_trading_day(d: date) -> date:
    """The first trading day strictly after d."""
    d += timedelta(days=1)
    while not is_trading_day(d):
        d += timedelta(days=1)
    return d


def on_or_before_trading_day(d: date) -> date:
    """d if it trades, else the previous trading day: how exchanges move an expiry."""
    return d if is_trading_day(d) else previous_trading_day(d)


# MCX is open on NSE trading days (it also opens for an evening session on some NSE
# holidays; the feed backend does not need that precision), so it shares the calendar.
is_mcx_trading_day = is_trading_day


# --- expiries -------------------------------------------------------------------------


def last_weekday_of_month(year: int, month: int, weekday: int) -> date:
    """The last `weekday` (0=Monday) of the month, before any holiday shift."""
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def monthly_expiry(year: int, month: int, weekday: int) -> date:
    """Monthly expiry: last `weekday` of the month, moved back over holidays."""
    return on_or_before_trading_day(last_weekday_of_month(year, month, weekday))


def _months_from(year: int, month: int) -> Iterator[tuple[int, int]]:
    while True:
        yield year, month
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def weekly_expiries(weekday: int, start: date, count: int) -> list[date]:
    """The next `count` weekly expiries on `weekday`, holiday-shifted, on or after start.

    A weekday that is a holiday expires on the previous trading day; if that is
    before `start` the contract has already expired and is skipped.
    """
    candidate = start + timedelta(days=(weekday - start.weekday()) % 7)
    out: list[date] = []
    while len(out) < count:
        expiry = on_or_before_trading_day(candidate)
        if expiry >= start and expiry not in out:
            out.append(expiry)
        candidate += timedelta(days=7)
    return out


def monthly_expiries(weekday: int, start: date, count: int) -> list[date]:
    """The next `count` monthly expiries (last `weekday`) on or after start."""
    out: list[date] = []
    for year, month in _months_from(start.year, start.month):
        if len(out) == count:
            return out
        expiry = monthly_expiry(year, month, weekday)
        if expiry >= start:
            out.append(expiry)
    raise AssertionError("unreachable")


def quarterly_expiries(weekday: int, after: date, count: int) -> list[date]:
    """`count` quarterly (Mar/Jun/Sep/Dec monthly) expiries in months after `after`'s month."""
    months = _months_from(after.year, after.month)
    next(months)  # strictly after the month of `after`
    out: list[date] = []
    for year, month in months:
        if len(out) == count:
            return out
        if month % 3 == 0:
            out.append(monthly_expiry(year, month, weekday))
    raise AssertionError("unreachable")


# MCX energy futures expire around the 19th-21st (CRUDEOIL) and the 25th-27th
# (NATURALGAS) depending on NYMEX; a fixed day moved back to a trading day is close
# enough for a simulator and is what the generated master uses.
MCX_FUTURE_EXPIRY_DAY: Final[Mapping[str, int]] = MappingProxyType({"CRUDEOIL": 19, "NATURALGAS": 25})
MCX_OPTION_LEAD_TRADING_DAYS: Final = 2


def mcx_future_expiry(symbol: str, year: int, month: int) -> date:
    return on_or_before_trading_day(date(year, month, MCX_FUTURE_EXPIRY_DAY[symbol]))


def mcx_option_expiry(future_expiry: date) -> date:
    """MCX options on a future expire 2 trading days before the future."""
    d = future_expiry
    for _ in range(MCX_OPTION_LEAD_TRADING_DAYS):
        d = previous_trading_day(d)
    return d


def mcx_future_expiries(symbol: str, start: date, count: int) -> list[date]:
    """The next `count` futures expiries on or after start (futures months)."""
    out: list[date] = []
    for year, month in _months_from(start.year, start.month):
        if len(out) == count:
            return out
        expiry = mcx_future_expiry(symbol, year, month)
        if expiry >= start:
            out.append(expiry)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ExpiryRule:
    """Which contracts an underlying lists on a given day."""

    monthly_weekday: int
    monthly_count: int = 3
    weekly_weekday: int | None = None
    weekly_count: int = 0
    quarterly_count: int = 0


_STOCK_RULE: Final = ExpiryRule(monthly_weekday=TUESDAY)
EXPIRY_RULES: Final[Mapping[str, ExpiryRule]] = MappingProxyType(
    {
        "NIFTY": ExpiryRule(TUESDAY, 3, weekly_weekday=TUESDAY, weekly_count=4, quarterly_count=4),
        "SENSEX": ExpiryRule(THURSDAY, 3, weekly_weekday=THURSDAY, weekly_count=4),
        "BANKNIFTY": ExpiryRule(TUESDAY),
        "FINNIFTY": ExpiryRule(TUESDAY),
        "MIDCPNIFTY": ExpiryRule(TUESDAY),
        "BANKEX": ExpiryRule(THURSDAY),
    }
)
MCX_FUTURES_COUNT: Final = 3


def expiry_rule(underlying: str) -> ExpiryRule:
    """Index rule by name; any other NSE name is a stock (monthly, last Tuesday)."""
    return EXPIRY_RULES.get(underlying, _STOCK_RULE)


def expiries_for(underlying: str, trading_date: date) -> list[tuple[date, ExpiryFlag]]:
    """Expiries listed on trading_date, sorted, flagged 'W' (weekly) or 'M' (monthly).

    A weekly that coincides with a monthly or quarterly is one contract, flagged 'M'.
    MCX underlyings return both futures and option expiries (all 'M').
    """
    if underlying in MCX_FUTURE_EXPIRY_DAY:
        return [(d, "M") for d in mcx_expiries(underlying, trading_date)]
    rule = expiry_rule(underlying)
    monthly = monthly_expiries(rule.monthly_weekday, trading_date, rule.monthly_count)
    if rule.quarterly_count:
        monthly += quarterly_expiries(rule.monthly_weekday, monthly[-1], rule.quarterly_count)
    weekly: list[date] = []
    if rule.weekly_weekday is not None:
        weekly = weekly_expiries(rule.weekly_weekday, trading_date, rule.weekly_count)
    monthly_set = set(monthly)
    flagged: dict[date, ExpiryFlag] = {d: "W" for d in weekly if d not in monthly_set}
    flagged.update((d, "M") for d in monthly)
    return sorted(flagged.items())


def mcx_expiries(symbol: str, trading_date: date) -> list[date]:
    """Futures expiries of the next 3 months plus their option expiries still alive."""
    futures = mcx_future_expiries(symbol, trading_date, MCX_FUTURES_COUNT)
    options = [o for o in map(mcx_option_expiry, futures) if o >= trading_date]
    return sorted(set(futures) | set(options))


# --- market hours ---------------------------------------------------------------------

NSE_PRE_OPEN: Final = time(9, 0)
NSE_OPEN: Final = time(9, 15)
NSE_CLOSE: Final = time(15, 30)
BSE_PRE_OPEN, BSE_OPEN, BSE_CLOSE = NSE_PRE_OPEN, NSE_OPEN, NSE_CLOSE
MCX_OPEN: Final = time(9, 0)
# 23:30 while the US is on daylight saving time; MCX extends to 23:55 in the US winter.
# The simpler fixed close is deliberate: callers only need "is it worth streaming".
MCX_CLOSE: Final = time(23, 30)

_SESSIONS: Final[Mapping[str, tuple[time, time]]] = MappingProxyType(
    {"NSE": (NSE_OPEN, NSE_CLOSE), "BSE": (BSE_OPEN, BSE_CLOSE), "MCX": (MCX_OPEN, MCX_CLOSE)}
)


def _exchange_of(exchange: str) -> str:
    """Accepts 'NSE', 'BSE', 'MCX' or a Dhan segment such as 'NSE_FNO' or 'MCX_COMM'."""
    name = exchange.upper()
    if name == "IDX_I":
        return "NSE"  # index values publish during cash-market hours
    head = name.split("_", 1)[0]
    if head not in _SESSIONS:
        raise ValueError(f"unknown exchange {exchange!r}")
    return head


def _as_ist(at: datetime) -> datetime:
    """Naive datetimes are taken to be IST already."""
    return at.replace(tzinfo=IST) if at.tzinfo is None else at.astimezone(IST)


def is_market_open(exchange: str, at: datetime) -> bool:
    """Continuous trading session, [open, close) in IST, on trading days."""
    local = _as_ist(at)
    opens, closes = _SESSIONS[_exchange_of(exchange)]
    return is_trading_day(local.date()) and opens <= local.time() < closes


def is_pre_open(exchange: str, at: datetime) -> bool:
    """NSE/BSE equity pre-open call auction, 09:00-09:15 IST; MCX has none."""
    local = _as_ist(at)
    if _exchange_of(exchange) == "MCX":
        return False
    return is_trading_day(local.date()) and NSE_PRE_OPEN <= local.time() < NSE_OPEN
