from datetime import UTC, datetime, timedelta

import pytest

from services.common.clock import ManualClock, WallClock, trading_date_of
from services.common.market_calendar import IST


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
