"""Fire times from the settings and the calendar: holidays skipped, the MCX close by US
season, re-centring only in market hours, the misfire window; and the settings' checks."""

from __future__ import annotations

import dataclasses
from datetime import time, timedelta

import grpc
import pytest
import pytest_asyncio

from services.common.config import ConfigError, Settings, load_settings
from services.scheduler.catalog import JobSpec, build_catalog
from services.scheduler.jobs import Jobs
from services.scheduler.plan import default_plan
from services.scheduler.schedules import last_fire
from tests.test_market_calendar import ist


async def jobs() -> Jobs:
    """Jobs on a channel nothing calls (an aio channel is made inside the running loop)."""
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    return Jobs(channel, channel, None, plan=default_plan, timeout=1.0, hysteresis_strikes=None, reload_at=time(8, 30))


@pytest_asyncio.fixture(loop_scope="session")
async def catalog() -> dict[str, JobSpec]:
    return build_catalog(Settings(), await jobs())


def test_daily_jobs_skip_weekends_and_exchange_holidays(catalog: dict[str, JobSpec]) -> None:
    end = catalog["end_of_day"].schedule
    # Tuesday 2026-11-24 is a holiday: Monday's close, then Wednesday's.
    assert end.next_fire(ist(2026, 11, 23, 15, 30)) == ist(2026, 11, 23, 15, 30)
    assert end.next_fire(ist(2026, 11, 23, 15, 31)) == ist(2026, 11, 25, 15, 30)
    assert catalog["reload_master"].schedule.next_fire(ist(2026, 11, 20, 9, 0)) == ist(2026, 11, 23, 8, 30)


def test_mcx_is_released_at_its_close_which_moves_with_us_daylight_time(catalog: dict[str, JobSpec]) -> None:
    release = catalog["release_mcx"].schedule
    assert release.next_fire(ist(2026, 7, 15, 12, 0)) == ist(2026, 7, 15, 23, 30)  # US summer time
    assert release.next_fire(ist(2026, 11, 20, 12, 0)) == ist(2026, 11, 20, 23, 55)  # US standard time
    # The US changes its clocks on 2026-03-08 and 2026-11-01.
    assert release.next_fire(ist(2026, 3, 6, 12, 0)) == ist(2026, 3, 6, 23, 55)
    assert release.next_fire(ist(2026, 3, 9, 12, 0)) == ist(2026, 3, 9, 23, 30)


def test_recentering_runs_every_few_seconds_in_market_hours_only(catalog: dict[str, JobSpec]) -> None:
    recenter = catalog["recenter_chains"].schedule
    assert recenter.next_fire(ist(2026, 11, 20, 7, 0)) == ist(2026, 11, 20, 9, 0)
    assert recenter.next_fire(ist(2026, 11, 20, 11, 0, 1)) == ist(2026, 11, 20, 11, 0, 5)
    # After Friday's MCX close (23:55 in November), Monday's open.
    assert recenter.next_fire(ist(2026, 11, 20, 23, 55)) == ist(2026, 11, 23, 9, 0)


def test_a_missed_fire_is_owed_within_the_grace_only(catalog: dict[str, JobSpec]) -> None:
    end = catalog["end_of_day"].schedule
    assert last_fire(end, ist(2026, 11, 20, 15, 45), timedelta(hours=1)) == ist(2026, 11, 20, 15, 30)
    assert last_fire(end, ist(2026, 11, 20, 16, 45), timedelta(hours=1)) is None
    assert last_fire(end, ist(2026, 11, 20, 15, 29), timedelta(hours=6)) is None


def test_settings_give_every_time_and_reject_bad_ones() -> None:
    settings = load_settings(
        {
            "SCHEDULER_END_OF_DAY_AT": "15:35",
            "SCHEDULER_MCX_CLOSE_US_WINTER_AT": "23:50",
            "SCHEDULER_RECENTER_HYSTERESIS_STRIKES": "1.1",
            "SCHEDULER_DISABLED_JOBS": "release_mcx, recenter_chains",
        }
    )
    assert settings.scheduler_end_of_day_at.strftime("%H:%M") == "15:35"
    assert settings.scheduler_recenter_hysteresis_strikes == 1.1
    assert settings.scheduler_disabled_jobs == ("release_mcx", "recenter_chains")
    assert load_settings({}).scheduler_recenter_hysteresis_strikes is None
    with pytest.raises(ConfigError, match="SCHEDULER_END_OF_DAY_AT"):
        load_settings({"SCHEDULER_END_OF_DAY_AT": "25:00"})
    with pytest.raises(ConfigError, match="SCHEDULER_LEADER_POLL_SECONDS"):
        load_settings({"SCHEDULER_LEADER_POLL_SECONDS": "30"})


async def test_disabled_jobs_must_be_known() -> None:
    with pytest.raises(ConfigError, match="end_of_week"):
        build_catalog(dataclasses.replace(Settings(), scheduler_disabled_jobs=("end_of_week",)), await jobs())
