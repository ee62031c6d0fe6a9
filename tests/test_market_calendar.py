from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.common import market_calendar as cal
from services.common.market_calendar import THURSDAY, TUESDAY


def test_weekends_and_published_holidays_do_not_trade() -> None:
    assert cal.is_trading_day(date(2026, 11, 23))  # Monday
    assert not cal.is_trading_day(date(2026, 11, 21))  # Saturday
    assert not cal.is_trading_day(date(2026, 11, 22))  # Sunday
    assert not cal.is_trading_day(date(2026, 11, 24))  # Guru Nanak Jayanti
    assert not cal.is_trading_day(date(2026, 1, 15))  # Maharashtra civic polls
    assert not cal.is_trading_day(date(2025, 10, 21))  # Diwali
    assert all(d.weekday() < 5 for d in cal.NSE_HOLIDAYS)
    assert {d.year for d in cal.NSE_HOLIDAYS} == {2025, 2026, 2027}


def test_previous_and_next_trading_day_skip_weekends_and_holidays() -> None:
    assert cal.next_trading_day(date(2026, 11, 20)) == date(2026, 11, 23)
    assert cal.next_trading_day(date(2026, 11, 23)) == date(2026, 11, 25)
    assert cal.previous_trading_day(date(2026, 11, 25)) == date(2026, 11, 23)
    assert cal.previous_trading_day(date(2026, 11, 23)) == date(2026, 11, 20)
    assert cal.previous_trading_day(date(2026, 4, 6)) == date(2026, 4, 2)  # Good Friday


def test_monthly_expiry_is_last_weekday_moved_back_over_holidays() -> None:
    assert cal.last_weekday_of_month(2026, 11, TUESDAY) == date(2026, 11, 24)
    assert cal.monthly_expiry(2026, 11, TUESDAY) == date(2026, 11, 23)  # 24th is a holiday
    assert cal.monthly_expiry(2026, 12, TUESDAY) == date(2026, 12, 29)
    assert cal.monthly_expiry(2026, 3, TUESDAY) == date(2026, 3, 30)  # Mahavir Jayanti on 31st
    assert cal.monthly_expiry(2026, 11, THURSDAY) == date(2026, 11, 26)
    assert cal.monthly_expiry(2026, 12, THURSDAY) == date(2026, 12, 31)


def test_weekly_expiries_shift_and_skip_expired() -> None:
    assert cal.weekly_expiries(TUESDAY, date(2026, 11, 21), 3) == [
        date(2026, 11, 23),
        date(2026, 12, 1),
        date(2026, 12, 8),
    ]
    # Thursday 2026-01-15 was a holiday: SENSEX expired on Wednesday the 14th.
    assert cal.weekly_expiries(THURSDAY, date(2026, 1, 12), 2) == [date(2026, 1, 14), date(2026, 1, 22)]
    # On the holiday itself the shifted contract has already expired.
    assert cal.weekly_expiries(TUESDAY, date(2026, 11, 24), 1) == [date(2026, 12, 1)]


def test_nifty_expiries_on_2026_11_21() -> None:
    got = cal.expiries_for("NIFTY", date(2026, 11, 21))
    assert got == [
        (date(2026, 11, 23), "M"),  # last Tuesday 24th is a holiday; weekly == monthly
        (date(2026, 12, 1), "W"),
        (date(2026, 12, 8), "W"),
        (date(2026, 12, 15), "W"),
        (date(2026, 12, 29), "M"),
        (date(2027, 1, 25), "M"),  # 26th is Republic Day
        (date(2027, 3, 30), "M"),  # quarterlies beyond the 3 monthlies
        (date(2027, 6, 29), "M"),
        (date(2027, 9, 28), "M"),
        (date(2027, 12, 28), "M"),
    ]


def test_expiry_on_the_trading_date_is_listed() -> None:
    got = cal.expiries_for("NIFTY", date(2026, 12, 1))
    assert got[0] == (date(2026, 12, 1), "W")
    assert cal.expiries_for("BANKNIFTY", date(2026, 12, 29))[0] == (date(2026, 12, 29), "M")


def test_sensex_weeklies_are_thursdays_and_monthlies_last_thursdays() -> None:
    got = cal.expiries_for("SENSEX", date(2026, 11, 21))
    assert got == [
        (date(2026, 11, 26), "M"),
        (date(2026, 12, 3), "W"),
        (date(2026, 12, 10), "W"),
        (date(2026, 12, 17), "W"),
        (date(2026, 12, 31), "M"),
        (date(2027, 1, 28), "M"),
    ]
    assert all(d.weekday() == THURSDAY for d, _ in got)


@pytest.mark.parametrize("name", ["BANKNIFTY", "FINNIFTY", "MIDCPNIFTY", "RELIANCE", "BANKEX"])
def test_monthly_only_underlyings_list_three_monthlies(name: str) -> None:
    got = cal.expiries_for(name, date(2026, 11, 21))
    weekday = THURSDAY if name == "BANKEX" else TUESDAY
    months = [(2026, 11), (2026, 12), (2027, 1)]
    assert got == [(cal.monthly_expiry(y, m, weekday), "M") for y, m in months]


def test_mcx_futures_and_options() -> None:
    assert cal.mcx_future_expiry("CRUDEOIL", 2026, 11) == date(2026, 11, 19)
    assert cal.mcx_option_expiry(date(2026, 11, 19)) == date(2026, 11, 17)
    assert cal.mcx_future_expiry("CRUDEOIL", 2026, 12) == date(2026, 12, 18)  # 19th is a Saturday
    assert cal.mcx_future_expiries("CRUDEOIL", date(2026, 11, 21), 3) == [
        date(2026, 12, 18),
        date(2027, 1, 19),
        date(2027, 2, 19),
    ]
    got = cal.expiries_for("CRUDEOIL", date(2026, 11, 21))
    assert [d for d, _ in got] == [
        date(2026, 12, 16),
        date(2026, 12, 18),
        date(2027, 1, 15),
        date(2027, 1, 19),
        date(2027, 2, 17),
        date(2027, 2, 19),
    ]
    assert {f for _, f in got} == {"M"}
    # NATURALGAS Nov future (25th) is alive but its options (20th) have expired.
    ng = [d for d, _ in cal.expiries_for("NATURALGAS", date(2026, 11, 21))]
    assert ng[0] == date(2026, 11, 25) and date(2026, 11, 20) not in ng


@pytest.mark.parametrize("name", ["NIFTY", "SENSEX", "BANKNIFTY", "BANKEX", "SBIN", "CRUDEOIL"])
def test_expiries_are_sorted_unique_trading_days_on_or_after_every_date(name: str) -> None:
    day = date(2025, 1, 1)
    while day <= date(2027, 6, 30):
        got = cal.expiries_for(name, day)
        dates = [d for d, _ in got]
        assert dates == sorted(set(dates))
        assert all(d >= day and cal.is_trading_day(d) for d in dates)
        if name in ("NIFTY", "SENSEX"):
            assert sum(1 for _, f in got if f == "W") <= 4
        day += timedelta(days=1)


def test_market_hours_nse_bse_mcx() -> None:
    at = datetime(2026, 11, 23, 10, 0, tzinfo=cal.IST)
    assert cal.is_market_open("NSE", at) and cal.is_market_open("BSE_FNO", at)
    assert not cal.is_market_open("NSE", at.replace(hour=9, minute=10))
    assert cal.is_pre_open("NSE", at.replace(hour=9, minute=10))
    assert cal.is_market_open("NSE", at.replace(hour=9, minute=15))
    assert not cal.is_market_open("NSE", at.replace(hour=15, minute=30))
    assert cal.is_market_open("MCX_COMM", at.replace(hour=23, minute=29))
    assert not cal.is_market_open("MCX", at.replace(hour=23, minute=30))
    assert not cal.is_market_open("NSE", datetime(2026, 11, 24, 10, 0, tzinfo=cal.IST))  # holiday
    assert not cal.is_market_open("MCX", datetime(2026, 11, 21, 12, 0, tzinfo=cal.IST))  # Saturday


def test_market_hours_convert_aware_datetimes_and_take_naive_as_ist() -> None:
    assert cal.is_market_open("NSE", datetime(2026, 11, 23, 4, 0, tzinfo=UTC))  # 09:30 IST
    assert not cal.is_market_open("NSE", datetime(2026, 11, 23, 10, 0, tzinfo=UTC))  # 15:30 IST
    assert cal.is_market_open("NSE", datetime(2026, 11, 23, 10, 0))
    with pytest.raises(ValueError):
        cal.is_market_open("NYSE", datetime(2026, 11, 23, 10, 0))


def test_today_ist_is_a_date() -> None:
    today = cal.today_ist()
    assert isinstance(today, date) and not isinstance(today, datetime)
