"""The listing rules of services.dhan.expiry_rules: which expiries each underlying lists."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from services.common import market_calendar as cal
from services.common.market_calendar import THURSDAY, TUESDAY
from services.dhan import expiry_rules as rules


def test_monthly_expiry_is_last_weekday_moved_back_over_holidays() -> None:
    assert cal.last_weekday_of_month(2026, 11, TUESDAY) == date(2026, 11, 24)
    assert rules.monthly_expiry(2026, 11, TUESDAY) == date(2026, 11, 23)  # 24th is a holiday
    assert rules.monthly_expiry(2026, 12, TUESDAY) == date(2026, 12, 29)
    assert rules.monthly_expiry(2026, 3, TUESDAY) == date(2026, 3, 30)  # Mahavir Jayanti on 31st
    assert rules.monthly_expiry(2026, 11, THURSDAY) == date(2026, 11, 26)
    assert rules.monthly_expiry(2026, 12, THURSDAY) == date(2026, 12, 31)


def test_weekly_expiries_shift_and_skip_expired() -> None:
    assert rules.weekly_expiries(TUESDAY, date(2026, 11, 21), 3) == [
        date(2026, 11, 23),
        date(2026, 12, 1),
        date(2026, 12, 8),
    ]
    # Thursday 2026-01-15 was a holiday: SENSEX expired on Wednesday the 14th.
    assert rules.weekly_expiries(THURSDAY, date(2026, 1, 12), 2) == [date(2026, 1, 14), date(2026, 1, 22)]
    # On the holiday itself the shifted contract has already expired.
    assert rules.weekly_expiries(TUESDAY, date(2026, 11, 24), 1) == [date(2026, 12, 1)]


def test_nifty_expiries_on_2026_11_21() -> None:
    got = rules.expiries_for("NIFTY", date(2026, 11, 21))
    assert got == [
        (date(2026, 11, 23), "M"),  # last Tuesday 24th is a holiday; weekly == monthly
        (date(2026, 12, 1), "W"),
        (date(2026, 12, 8), "W"),
        (date(2026, 12, 15), "W"),
        (date(2026, 12, 22), "W"),  # 4 weeklies besides the monthlies
        (date(2026, 12, 29), "M"),
        (date(2027, 1, 25), "M"),  # 26th is Republic Day
        (date(2027, 3, 30), "M"),  # 3 quarterlies after the 3 monthlies
        (date(2027, 6, 29), "M"),
        (date(2027, 9, 28), "M"),
        (date(2027, 12, 28), "M"),  # then 8 half-yearlies (Jun/Dec)
        (date(2028, 6, 27), "M"),
        (date(2028, 12, 26), "M"),
        (date(2029, 6, 26), "M"),
        (date(2029, 12, 24), "M"),  # Christmas, a fixed-date holiday in a year the file does not list
        (date(2030, 6, 25), "M"),
        (date(2030, 12, 31), "M"),
        (date(2031, 6, 24), "M"),
    ]


def test_banknifty_lists_three_monthlies_then_three_quarterlies() -> None:
    assert rules.expiries_for("BANKNIFTY", date(2026, 12, 7)) == [
        (date(2026, 12, 29), "M"),
        (date(2027, 1, 25), "M"),
        (date(2027, 2, 23), "M"),
        (date(2027, 3, 30), "M"),
        (date(2027, 6, 29), "M"),
        (date(2027, 9, 28), "M"),
    ]
    # After the March quarterly becomes a serial month, the next quarterly is December.
    got = [d for d, _ in rules.expiries_for("BANKNIFTY", date(2027, 1, 26))]
    assert got[3:] == [date(2027, 6, 29), date(2027, 9, 28), date(2027, 12, 28)]


def test_expiry_on_the_trading_date_is_listed() -> None:
    got = rules.expiries_for("NIFTY", date(2026, 12, 1))
    assert got[0] == (date(2026, 12, 1), "W")
    assert rules.expiries_for("BANKNIFTY", date(2026, 12, 29))[0] == (date(2026, 12, 29), "M")


def test_sensex_weeklies_are_thursdays_and_monthlies_last_thursdays() -> None:
    got = rules.expiries_for("SENSEX", date(2026, 11, 21))
    assert got == [
        (date(2026, 11, 26), "M"),
        (date(2026, 12, 3), "W"),
        (date(2026, 12, 10), "W"),
        (date(2026, 12, 17), "W"),
        (date(2026, 12, 24), "W"),
        (date(2026, 12, 31), "M"),
        (date(2027, 1, 28), "M"),
    ]
    assert all(d.weekday() == THURSDAY for d, _ in got)


@pytest.mark.parametrize("name", ["FINNIFTY", "MIDCPNIFTY", "RELIANCE", "BANKEX"])
def test_monthly_only_underlyings_list_three_monthlies(name: str) -> None:
    got = rules.expiries_for(name, date(2026, 11, 21))
    weekday = THURSDAY if name == "BANKEX" else TUESDAY
    months = [(2026, 11), (2026, 12), (2027, 1)]
    assert got == [(rules.monthly_expiry(y, m, weekday), "M") for y, m in months]


def test_mcx_futures_and_options() -> None:
    assert rules.mcx_future_expiry("CRUDEOIL", 2026, 11) == date(2026, 11, 19)
    assert rules.mcx_option_expiry(date(2026, 11, 19)) == date(2026, 11, 17)
    assert rules.mcx_future_expiry("CRUDEOIL", 2026, 12) == date(2026, 12, 18)  # 19th is a Saturday
    assert rules.mcx_future_expiries("CRUDEOIL", date(2026, 11, 21), 3) == [
        date(2026, 12, 18),
        date(2027, 1, 19),
        date(2027, 2, 19),
    ]
    got = rules.expiries_for("CRUDEOIL", date(2026, 11, 21))
    assert [d for d, _ in got] == [
        date(2026, 12, 16),
        date(2026, 12, 18),
        date(2027, 1, 15),
        date(2027, 1, 19),
        date(2027, 2, 17),
        date(2027, 2, 19),
    ]
    assert {f for _, f in got} == {"M"}
    # NATURALGAS Nov options expire 2 MCX trading days before the future (25th): MCX trades
    # the evening of 24 Nov (an NSE holiday), so the options expire on the 23rd, still alive.
    ng = [d for d, _ in rules.expiries_for("NATURALGAS", date(2026, 11, 21))]
    assert ng[:2] == [date(2026, 11, 23), date(2026, 11, 25)]
    # A week earlier CRUDEOIL's Nov options (17th) are listed; on the 18th they have expired.
    assert date(2026, 11, 17) in [d for d, _ in rules.expiries_for("CRUDEOIL", date(2026, 11, 17))]
    assert date(2026, 11, 17) not in [d for d, _ in rules.expiries_for("CRUDEOIL", date(2026, 11, 18))]


@pytest.mark.parametrize("name", ["NIFTY", "SENSEX", "BANKNIFTY", "BANKEX", "SBIN", "CRUDEOIL"])
def test_expiries_are_sorted_unique_trading_days_on_or_after_every_date(name: str) -> None:
    day = date(2025, 1, 1)
    while day <= date(2027, 6, 30):
        got = rules.expiries_for(name, day)
        dates = [d for d, _ in got]
        assert dates == sorted(set(dates))
        exchange = "MCX" if name == "CRUDEOIL" else "NSE"
        assert all(d >= day and cal.is_trading_day(d, exchange) for d in dates)
        if name in ("NIFTY", "SENSEX"):
            assert sum(1 for _, f in got if f == "W") == 4
        day += timedelta(days=1)


def test_an_mcx_expiry_on_an_mcx_holiday_moves_back_on_mcx_s_calendar() -> None:
    # 2026-10-02 (Friday) MCX is shut all day: a future due that day expires on Thursday.
    assert not cal.is_trading_day(date(2026, 10, 2), "MCX")
    assert rules.on_or_before_trading_day(date(2026, 10, 2), "MCX") == date(2026, 10, 1)
    # 2026-03-31 is an NSE holiday but MCX trades its evening session: an MCX expiry stays.
    assert cal.is_trading_day(date(2026, 3, 31), "MCX") and not cal.is_trading_day(date(2026, 3, 31))
    assert rules.mcx_option_expiry(date(2026, 4, 2)) == date(2026, 3, 31)
