"""Which expiries each underlying lists on a trading date: the exchanges' contract cycles.

Sources (written without network access, from the exchanges' contract specifications as
known in late 2025; check them when a cycle changes):
- NSE, "Contract specifications" of index derivatives (nseindia.com, equity derivatives):
  NIFTY options: 4 weekly expiries besides the monthlies, 3 serial monthly, then 3 quarterly
  (Mar/Jun/Sep/Dec) and then the next 8 half-yearly (Jun/Dec). BANKNIFTY: 3 monthly and 3
  quarterly. FINNIFTY and MIDCPNIFTY: 3 monthly. Index futures: the 3 serial months. Stock
  futures and options: 3 serial months. Since SEBI's 2025 expiry-day rationalisation every
  NSE contract expires on a Tuesday (monthly: the month's last Tuesday).
- BSE, SENSEX and BANKEX derivatives (bseindia.com): not re-checked here. What is encoded
  is what the market knew: SENSEX weekly options (4 besides the monthlies, like NIFTY) plus
  3 monthly; BANKEX 3 monthly only (its weeklies were discontinued in November 2024); BSE
  contracts expire on Thursdays (monthly: the month's last Thursday).
- MCX energy (CRUDEOIL, NATURALGAS): futures of the next 3 months expiring around the
  19th-21st (CRUDEOIL) and the 25th-27th (NATURALGAS), with NYMEX; a fixed day is used.
  Options on a future expire 2 MCX trading days before it.

An expiry that falls on a holiday moves to the previous trading day of its exchange's
calendar (MCX's own calendar for MCX).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from itertools import islice
from types import MappingProxyType
from typing import Final, Literal

from services.common.market_calendar import (
    THURSDAY,
    TUESDAY,
    last_weekday_of_month,
    on_or_before_trading_day,
    previous_trading_day,
)

ExpiryFlag = Literal["W", "M"]


def monthly_expiry(year: int, month: int, weekday: int) -> date:
    """Monthly expiry: last `weekday` of the month, moved back over NSE/BSE holidays."""
    return on_or_before_trading_day(last_weekday_of_month(year, month, weekday))


def months_from(year: int, month: int) -> Iterator[tuple[int, int]]:
    while True:
        yield year, month
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _months_after(day: date) -> Iterator[tuple[int, int]]:
    months = months_from(day.year, day.month)
    next(months)
    return months


def _next_per_month(expiry_in: Callable[[int, int], date], start: date, count: int) -> list[date]:
    """The next `count` expiries on or after start, one a month, each month's from `expiry_in`."""
    expiries = (expiry_in(year, month) for year, month in months_from(start.year, start.month))
    return list(islice((expiry for expiry in expiries if expiry >= start), count))


def monthly_expiries(weekday: int, start: date, count: int) -> list[date]:
    """The next `count` monthly expiries (last `weekday`) on or after start."""
    return _next_per_month(lambda year, month: monthly_expiry(year, month, weekday), start, count)


def cycle_expiries(weekday: int, after: date, months: tuple[int, ...], count: int) -> list[date]:
    """`count` monthly expiries in the cycle `months` (e.g. 3, 6, 9, 12), in months after `after`'s."""
    in_cycle = (monthly_expiry(year, month, weekday) for year, month in _months_after(after) if month in months)
    return list(islice(in_cycle, count))


def weekly_expiries(weekday: int, start: date, count: int, exclude: frozenset[date] = frozenset()) -> list[date]:
    """The next `count` weekly expiries on `weekday`, holiday-shifted, on or after start,
    not counting dates in `exclude` (the monthlies, which are their own contracts).

    A weekday that is a holiday expires on the previous trading day; if that is before
    `start` the contract has already expired and is skipped.
    """
    candidate = start + timedelta(days=(weekday - start.weekday()) % 7)
    out: list[date] = []
    while len(out) < count:
        expiry = on_or_before_trading_day(candidate)
        if expiry >= start and expiry not in out and expiry not in exclude:
            out.append(expiry)
        candidate += timedelta(days=7)
    return out


QUARTER_MONTHS: Final = (3, 6, 9, 12)
HALF_YEAR_MONTHS: Final = (6, 12)


@dataclass(frozen=True)
class ExpiryRule:
    """Which contracts an underlying lists on a given day: `monthly_count` serial monthlies,
    then `quarterly_count` quarterlies, then `half_yearly_count` half-yearlies, plus
    `weekly_count` weeklies besides the monthlies."""

    weekday: int
    monthly_count: int = 3
    weekly_count: int = 0
    quarterly_count: int = 0
    half_yearly_count: int = 0


_STOCK_RULE: Final = ExpiryRule(TUESDAY)
EXPIRY_RULES: Final[Mapping[str, ExpiryRule]] = MappingProxyType(
    {
        "NIFTY": ExpiryRule(TUESDAY, 3, weekly_count=4, quarterly_count=3, half_yearly_count=8),
        "BANKNIFTY": ExpiryRule(TUESDAY, 3, quarterly_count=3),
        "FINNIFTY": ExpiryRule(TUESDAY),
        "MIDCPNIFTY": ExpiryRule(TUESDAY),
        "SENSEX": ExpiryRule(THURSDAY, 3, weekly_count=4),
        "BANKEX": ExpiryRule(THURSDAY),
    }
)


def expiry_rule(underlying: str) -> ExpiryRule:
    """Index rule by name; any other NSE name is a stock (monthly, last Tuesday)."""
    return EXPIRY_RULES.get(underlying, _STOCK_RULE)


def long_dated_expiries(rule: ExpiryRule, trading_date: date) -> list[date]:
    """Serial monthlies, then quarterlies after them, then half-yearlies after those."""
    out = monthly_expiries(rule.weekday, trading_date, rule.monthly_count)
    if rule.quarterly_count:
        out += cycle_expiries(rule.weekday, out[-1], QUARTER_MONTHS, rule.quarterly_count)
    if rule.half_yearly_count:
        out += cycle_expiries(rule.weekday, out[-1], HALF_YEAR_MONTHS, rule.half_yearly_count)
    return out


def expiries_for(underlying: str, trading_date: date) -> list[tuple[date, ExpiryFlag]]:
    """Expiries listed on trading_date, sorted, flagged 'W' (weekly) or 'M' (monthly and
    longer). MCX underlyings return both futures and option expiries (all 'M')."""
    if underlying in MCX_FUTURE_EXPIRY_DAY:
        return [(d, "M") for d in mcx_expiries(underlying, trading_date)]
    rule = expiry_rule(underlying)
    monthly = long_dated_expiries(rule, trading_date)
    weekly = weekly_expiries(rule.weekday, trading_date, rule.weekly_count, frozenset(monthly))
    flagged: dict[date, ExpiryFlag] = {d: "W" for d in weekly}
    flagged.update((d, "M") for d in monthly)
    return sorted(flagged.items())


# --- MCX ------------------------------------------------------------------------------

MCX_FUTURE_EXPIRY_DAY: Final[Mapping[str, int]] = MappingProxyType({"CRUDEOIL": 19, "NATURALGAS": 25})
MCX_OPTION_LEAD_TRADING_DAYS: Final = 2
MCX_FUTURES_COUNT: Final = 3


def mcx_future_expiry(symbol: str, year: int, month: int) -> date:
    return on_or_before_trading_day(date(year, month, MCX_FUTURE_EXPIRY_DAY[symbol]), "MCX")


def mcx_option_expiry(future_expiry: date) -> date:
    """MCX options on a future expire 2 MCX trading days before the future."""
    d = future_expiry
    for _ in range(MCX_OPTION_LEAD_TRADING_DAYS):
        d = previous_trading_day(d, "MCX")
    return d


def mcx_future_expiries(symbol: str, start: date, count: int) -> list[date]:
    """The next `count` futures expiries on or after start (futures months)."""
    return _next_per_month(lambda year, month: mcx_future_expiry(symbol, year, month), start, count)


def mcx_expiries(symbol: str, trading_date: date) -> list[date]:
    """Futures expiries of the next 3 months plus their option expiries still alive."""
    futures = mcx_future_expiries(symbol, trading_date, MCX_FUTURES_COUNT)
    options = [o for o in map(mcx_option_expiry, futures) if o >= trading_date]
    return sorted(set(futures) | set(options))
