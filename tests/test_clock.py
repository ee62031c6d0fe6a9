from datetime import UTC, date, datetime, timedelta

import pytest

from services.common.clock import ManualClock, SimulatedSessionClock, WallClock, clock_from_settings, trading_date_of
from services.common.config import ConfigError, load_settings
from services.common.market_calendar import IST, Phase, is_trading_day, market_phase


def test_manual_clock_moves_only_forward_and_only_when_told() -> None:
    clock = ManualClock(datetime(2026, 12, 7, 3, 0, tzinfo=UTC))
    assert clock.now() == datetime(2026, 12, 7, 8, 30, tzinfo=IST)
    clock.advance(timedelta(hours=7))
    assert clock.now().hour == 15 and clock.now().minute == 30
    clock.set(datetime(2026, 12, 8, 9, 0, tzinfo=IST))
    assert trading_date_of(clock).isoformat() == "2026-12-08"
    with pytest.raises(ValueError, match="does not go back"):
        clock.set(datetime(2026, 12, 7, 9, 0, tzinfo=IST))
    with pytest.raises(ValueError, match="aware"):
        ManualClock(datetime(2026, 12, 7, 9, 0))


def test_wall_clock_is_in_ist() -> None:
    assert WallClock().now().utcoffset() == timedelta(hours=5, minutes=30)


# --- the simulated session clock ------------------------------------------------------


def _simulated(at: datetime) -> tuple[SimulatedSessionClock, ManualClock]:
    wall = ManualClock(at)
    return SimulatedSessionClock(wall), wall


def test_simulated_clock_equals_the_wall_clock_during_a_real_session() -> None:
    clock, wall = _simulated(datetime(2026, 12, 7, 9, 15, tzinfo=IST))
    assert clock.now() == wall.now()
    wall.set(datetime(2026, 12, 7, 15, 29, 59, tzinfo=IST))
    assert clock.now() == wall.now()


def test_simulated_clock_wraps_within_the_session_in_real_time() -> None:
    clock, wall = _simulated(datetime(2026, 12, 7, 15, 29, 59, tzinfo=IST))
    wall.advance(timedelta(seconds=1))  # wall 15:30: back to the open, same trading date
    assert clock.now() == datetime(2026, 12, 7, 9, 15, tzinfo=IST)
    wall.advance(timedelta(minutes=3, seconds=2))
    assert clock.now() == datetime(2026, 12, 7, 9, 18, 2, tzinfo=IST)
    # Before the real open: 08:00 is 1h15m before 09:15, i.e. 5h00m into the previous lap.
    clock, _ = _simulated(datetime(2026, 12, 8, 8, 0, tzinfo=IST))
    assert clock.now() == datetime(2026, 12, 8, 14, 15, tzinfo=IST)


def test_simulated_clock_on_a_saturday_night_and_a_holiday_is_in_the_last_session() -> None:
    clock, _ = _simulated(datetime(2026, 12, 12, 22, 0, tzinfo=IST))  # Saturday
    assert clock.now() == datetime(2026, 12, 11, 9, 30, tzinfo=IST)  # Friday, 12h45m past 09:15 mod 6h15m
    clock, _ = _simulated(datetime(2026, 12, 25, 12, 0, tzinfo=IST))  # Christmas, a Friday
    assert clock.now() == datetime(2026, 12, 24, 12, 0, tzinfo=IST)
    assert trading_date_of(clock) == date(2026, 12, 24)


def test_simulated_clock_is_always_inside_an_open_nse_session_of_a_trading_day() -> None:
    clock, wall = _simulated(datetime(2026, 12, 18, 0, 0, 0, 1, tzinfo=IST))
    while wall.now() < datetime(2026, 12, 29, tzinfo=IST):  # Christmas and two weekends
        now = clock.now()
        assert is_trading_day(now.date()) and market_phase("NSE", now)[0] is Phase.OPEN, wall.now()
        assert market_phase("MCX", now)[0] is Phase.OPEN
        wall.advance(timedelta(minutes=7, seconds=13))


def test_market_clock_setting_picks_the_clock() -> None:
    assert isinstance(clock_from_settings(load_settings({})), SimulatedSessionClock)
    assert isinstance(clock_from_settings(load_settings({"MARKET_CLOCK": "exchange"})), WallClock)
    with pytest.raises(ConfigError, match="MARKET_CLOCK='wall' is not accepted"):
        load_settings({"MARKET_CLOCK": "wall"})
