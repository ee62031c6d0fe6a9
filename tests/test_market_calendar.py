from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.common import market_calendar as cal


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


def test_market_hours_nse_bse_mcx() -> None:
    at = datetime(2026, 11, 23, 10, 0, tzinfo=cal.IST)
    assert cal.is_market_open("NSE", at) and cal.is_market_open("BSE_FNO", at)
    assert not cal.is_market_open("NSE", at.replace(hour=9, minute=10))
    assert cal.is_pre_open("NSE", at.replace(hour=9, minute=10))
    assert cal.is_market_open("NSE", at.replace(hour=9, minute=15))
    assert not cal.is_market_open("NSE", at.replace(hour=15, minute=30))
    # MCX closes at 23:55 while the US is on standard time (November), 23:30 in June.
    assert cal.is_market_open("MCX_COMM", at.replace(hour=23, minute=54))
    assert not cal.is_market_open("MCX", at.replace(hour=23, minute=55))
    june = datetime(2026, 6, 22, 23, 29, tzinfo=cal.IST)
    assert cal.is_market_open("MCX", june) and not cal.is_market_open("MCX", june.replace(minute=30))
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


# --- the holidays file ----------------------------------------------------------------

HEADER = "calendar,date,closed,name\n"


def test_the_shipped_holidays_file_gives_mcx_its_own_calendar() -> None:
    holidays = cal.parse_holidays(cal.HOLIDAYS_FILE.read_text(encoding="utf-8"))
    assert set(holidays["NSE"]) == cal.NSE_HOLIDAYS
    assert set(holidays["MCX"]) == cal.MCX_CLOSED_DAYS | cal.MCX_EVENING_ONLY_DAYS
    assert not cal.MCX_CLOSED_DAYS & cal.MCX_EVENING_ONLY_DAYS
    # Christmas shuts both; on Guru Nanak Jayanti MCX trades its evening session.
    assert not cal.is_trading_day(date(2026, 12, 25), "MCX") and not cal.is_trading_day(date(2026, 12, 25), "BSE")
    assert cal.is_trading_day(date(2026, 11, 24), "MCX_COMM") and not cal.is_trading_day(date(2026, 11, 24), "NSE")
    assert cal.is_mcx_trading_day(date(2026, 11, 24))
    assert cal.next_trading_day(date(2026, 11, 23), "MCX") == date(2026, 11, 24)
    assert cal.previous_trading_day(date(2026, 12, 28), "MCX") == date(2026, 12, 24)


def test_comments_and_blank_lines_are_skipped() -> None:
    text = "# a comment\n\n" + HEADER + "  # indented comment\nNSE,2026-12-25,day,Christmas\n"
    assert cal.parse_holidays(text) == {"NSE": {date(2026, 12, 25): "day"}, "MCX": {}}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("NYSE,2026-12-25,day,Christmas", "calendar 'NYSE' is not NSE or MCX"),
        ("NSE,25/12/2026,day,Christmas", "date '25/12/2026' is not YYYY-MM-DD"),
        ("NSE,2026-12-26,day,Saturday", "weekend"),
        ("NSE,2026-12-25,evening,Christmas", "closed 'evening' is not 'day' or 'morning'"),
        ("NSE,2026-12-25,morning,Christmas", "only MCX has an evening session"),
        ("NSE,2026-12-25,day,", "needs a name"),
        ("NSE,2026-12-25,day", "expected 4 fields"),
        ("NSE,2026-11-24,day,again", "listed twice"),
    ],
)
def test_a_bad_line_fails_naming_its_line(line: str, message: str) -> None:
    text = "# comment\n" + HEADER + "NSE,2026-11-24,day,Guru Nanak Jayanti\n" + line + "\n"
    with pytest.raises(cal.HolidayFileError, match=rf"^holidays\.csv:4: .*{message}"):
        cal.parse_holidays(text)


def test_a_file_without_its_header_fails() -> None:
    with pytest.raises(cal.HolidayFileError, match=r"holidays\.csv:1: expected the header"):
        cal.parse_holidays("NSE,2026-12-25,day,Christmas\n")
    with pytest.raises(cal.HolidayFileError, match="no header"):
        cal.parse_holidays("# only comments\n")


# --- market phases --------------------------------------------------------------------

P = cal.Phase


def ist(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=cal.IST)


def test_nse_phases_through_a_trading_day() -> None:
    monday = (2026, 12, 7)
    assert cal.market_phase("NSE_EQ", ist(*monday, 8, 59)) == (P.CLOSED, ist(*monday, 9, 0))
    assert cal.market_phase("NSE_EQ", ist(*monday, 9, 0)) == (P.PRE_OPEN, ist(*monday, 9, 15))
    assert cal.market_phase("NSE_FNO", ist(*monday, 9, 15)) == (P.OPEN, ist(*monday, 15, 30))
    assert cal.market_phase("BSE_EQ", ist(*monday, 15, 29, 59)) == (P.OPEN, ist(*monday, 15, 30))
    # After the close: closed until the next morning's pre-open (Tuesday trades).
    assert cal.market_phase("IDX_I", ist(*monday, 15, 30)) == (P.CLOSED, ist(2026, 12, 8, 9, 0))


def test_weekends_and_holidays_are_holiday_phases() -> None:
    friday_close = ist(2026, 12, 11, 15, 30)
    assert cal.market_phase("NSE", friday_close) == (P.CLOSED, ist(2026, 12, 12, 0, 0))
    assert cal.market_phase("NSE", ist(2026, 12, 12, 22, 0)) == (P.HOLIDAY, ist(2026, 12, 14, 0, 0))
    assert cal.market_phase("NSE", ist(2026, 12, 14, 0, 0)) == (P.CLOSED, ist(2026, 12, 14, 9, 0))
    # Christmas (Friday) then the weekend: one holiday until Monday.
    assert cal.market_phase("BSE_FNO", ist(2026, 12, 25, 11, 0)) == (P.HOLIDAY, ist(2026, 12, 28, 0, 0))
    assert cal.market_phase("BSE_FNO", ist(2026, 12, 24, 16, 0)) == (P.CLOSED, ist(2026, 12, 25, 0, 0))


def test_mcx_phases_evening_sessions_and_the_us_switch() -> None:
    # November, US standard time: 09:00-23:55; no pre-open.
    assert cal.market_phase("MCX_COMM", ist(2026, 12, 7, 8, 0)) == (P.CLOSED, ist(2026, 12, 7, 9, 0))
    assert cal.market_phase("MCX_COMM", ist(2026, 12, 7, 9, 0)) == (P.OPEN, ist(2026, 12, 7, 23, 55))
    # Guru Nanak Jayanti: NSE shut, MCX opens for its evening session only.
    assert cal.market_phase("NSE", ist(2026, 11, 24, 12, 0))[0] is P.HOLIDAY
    assert cal.market_phase("MCX", ist(2026, 11, 24, 12, 0)) == (P.CLOSED, ist(2026, 11, 24, 17, 0))
    assert cal.market_phase("MCX", ist(2026, 11, 24, 17, 0)) == (P.OPEN, ist(2026, 11, 24, 23, 55))
    # Christmas: MCX shut all day.
    assert cal.market_phase("MCX", ist(2026, 12, 25, 18, 0)) == (P.HOLIDAY, ist(2026, 12, 28, 0, 0))
    # The US moves its clocks on Sunday 8 March 2026 and Sunday 1 November 2026.
    assert cal.market_phase("MCX", ist(2026, 3, 6, 23, 0)) == (P.OPEN, ist(2026, 3, 6, 23, 55))
    assert cal.market_phase("MCX", ist(2026, 3, 9, 23, 0)) == (P.OPEN, ist(2026, 3, 9, 23, 30))
    assert cal.market_phase("MCX", ist(2026, 10, 30, 23, 0)) == (P.OPEN, ist(2026, 10, 30, 23, 30))
    assert cal.market_phase("MCX", ist(2026, 11, 2, 23, 0)) == (P.OPEN, ist(2026, 11, 2, 23, 55))


def test_us_standard_time_is_computed_from_the_rule() -> None:
    # Second Sunday of March and first Sunday of November, 2025-2028.
    switches = {2025: (9, 2), 2026: (8, 1), 2027: (14, 7), 2028: (12, 5)}
    day = timedelta(days=1)
    for year, (march, november) in switches.items():
        assert cal.us_on_standard_time(date(year, 3, march) - day)
        assert not cal.us_on_standard_time(date(year, 3, march))
        assert not cal.us_on_standard_time(date(year, 11, november) - day)
        assert cal.us_on_standard_time(date(year, 11, november))


def test_currency_segments_trade_nine_to_five_without_pre_open() -> None:
    assert cal.market_phase("NSE_CURRENCY", ist(2026, 12, 7, 9, 0)) == (P.OPEN, ist(2026, 12, 7, 17, 0))
    assert cal.market_phase("BSE_CURRENCY", ist(2026, 12, 7, 8, 0)) == (P.CLOSED, ist(2026, 12, 7, 9, 0))


SEGMENTS = ("IDX_I", "NSE_EQ", "NSE_FNO", "NSE_CURRENCY", "BSE_EQ", "BSE_FNO", "BSE_CURRENCY", "MCX_COMM")


@pytest.mark.parametrize("segment", SEGMENTS)
def test_next_change_is_exactly_when_the_phase_changes(segment: str) -> None:
    """Over two months with holidays and the US switch: the phase holds until next_change_at
    and differs from it on."""
    at = ist(2026, 10, 15, 0, 7)
    tick = timedelta(microseconds=1)
    while at < ist(2026, 12, 31):
        phase, change = cal.market_phase(segment, at)
        assert change > at
        assert cal.market_phase(segment, change - tick)[0] is phase
        assert cal.market_phase(segment, change)[0] is not phase
        at = change + timedelta(minutes=(at.minute * 7) % 50)  # land inside the next phase too


def test_index_values_follow_nse() -> None:
    for at in (ist(2026, 12, 7, 9, 5), ist(2026, 11, 24, 10, 0), ist(2026, 12, 7, 16, 0)):
        assert cal.market_phase("IDX_I", at) == cal.market_phase("NSE", at)
    with pytest.raises(ValueError, match="unknown exchange 'NSE_XYZ'"):
        cal.market_phase("NSE_XYZ", ist(2026, 12, 7, 10, 0))


def test_years_the_file_does_not_list_close_on_the_fixed_date_holidays() -> None:
    assert 2029 not in cal.HOLIDAY_YEARS
    assert not cal.is_trading_day(date(2029, 12, 25)) and not cal.is_trading_day(date(2029, 12, 25), "MCX")
    assert not cal.is_trading_day(date(2029, 1, 26)) and cal.is_trading_day(date(2029, 1, 25))
    # Maharashtra Day: NSE shut, MCX evening only.
    assert not cal.is_trading_day(date(2029, 5, 1)) and cal.is_trading_day(date(2029, 5, 1), "MCX")
    assert cal.market_phase("MCX", ist(2029, 5, 1, 10, 0)) == (P.CLOSED, ist(2029, 5, 1, 17, 0))
