"""The scheduler's jobs: name, what it does, when it fires, and when a manual run would skip
or be refused. Every time comes from the settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, time

from services.common.config import ConfigError, Settings
from services.common.errors import FailedPrecondition
from services.common.market_calendar import IST, MCX_OPEN, is_mcx_trading_day, is_trading_day, us_on_standard_time
from services.scheduler.jobs import JobResult, Jobs
from services.scheduler.schedules import AnyOf, DailyAt, Every, Schedule, Window

RELOAD_MASTER = "reload_master"
PRELOAD_TIER_B = "preload_tier_b"
RECENTER_CHAINS = "recenter_chains"
END_OF_DAY = "end_of_day"
RELEASE_MCX = "release_mcx"
JOB_NAMES = (RELOAD_MASTER, PRELOAD_TIER_B, RECENTER_CHAINS, END_OF_DAY, RELEASE_MCX)


@dataclass(frozen=True)
class JobSpec:
    name: str
    description: str
    schedule: Schedule
    action: Callable[[date], Awaitable[JobResult]]
    enabled: bool = True
    # A dated job runs on schedule at most once per trading date; an undated one
    # (recenter_chains) runs whenever due inside its window.
    dated: bool = True
    is_day: Callable[[date], bool] = is_trading_day
    window: Window | None = None
    # Besides the misfire grace, a leader starting while this holds owes the day's run
    # (the preload, whenever a session is open).
    catch_up_while: Callable[[datetime], bool] | None = None
    # A manual run earlier than this on a trading day is refused unless forced (end_of_day).
    not_before: time | None = None

    def manual_skip(self, now: datetime) -> str:
        """Why a manual run without force would do nothing now; empty when it would run."""
        if self.window is not None and not self.window.contains(now):
            return "outside market hours"
        if self.dated and not self.is_day(now.date()):
            return f"{now.date().isoformat()} is not a trading day"
        return ""

    def check_manual(self, now: datetime) -> None:
        """FAILED_PRECONDITION for a manual run without force that would act too early."""
        local = now.astimezone(IST)
        if self.not_before is not None and self.is_day(local.date()) and local.time() < self.not_before:
            raise FailedPrecondition(
                f"{self.name} before the {self.not_before:%H:%M} IST close would end a session still trading; "
                "set force to run it now"
            )


def mcx_close(settings: Settings) -> Callable[[date], time]:
    """MCX closes later while the US is on standard time."""

    def close(day: date) -> time:
        if us_on_standard_time(day):
            return settings.scheduler_mcx_close_us_winter_at
        return settings.scheduler_mcx_close_at

    return close


def _on(is_day: Callable[[date], bool]) -> Callable[[datetime], bool]:
    return lambda at: is_day(at.date())


def _any_session_day(day: date) -> bool:
    return is_trading_day(day) or is_mcx_trading_day(day)


def _at_mcx_close(settings: Settings) -> Schedule:
    """The MCX close of each MCX trading day: one time while the US is on daylight saving
    time, a later one while it is on standard time."""
    return AnyOf(
        (
            DailyAt(
                settings.scheduler_mcx_close_at,
                lambda at: is_mcx_trading_day(at.date()) and not us_on_standard_time(at.date()),
                "on MCX trading days while the US is on daylight saving time",
            ),
            DailyAt(
                settings.scheduler_mcx_close_us_winter_at,
                lambda at: is_mcx_trading_day(at.date()) and us_on_standard_time(at.date()),
                "on MCX trading days while the US is on standard time",
            ),
        )
    )


def build_catalog(settings: Settings, jobs: Jobs) -> dict[str, JobSpec]:
    """The jobs by name; SCHEDULER_DISABLED_JOBS must name known jobs."""
    unknown = sorted(set(settings.scheduler_disabled_jobs) - set(JOB_NAMES))
    if unknown:
        raise ConfigError(f"SCHEDULER_DISABLED_JOBS names unknown jobs {unknown}; the jobs are {list(JOB_NAMES)}")
    # From the MCX open (NSE's pre-open starts then too) to the MCX close: a session is open.
    sessions = Window(MCX_OPEN, mcx_close(settings), _any_session_day)
    specs = [
        JobSpec(
            RELOAD_MASTER,
            "Reloads the instrument master from its configured source, releases what expired (Tier A units "
            "evicted as EXPIRED, expired Tier B chains removed, both audited), then sends the Tier B plan in "
            "force again so that its chains roll to the next expiry.",
            DailyAt(settings.scheduler_reload_master_at, _on(is_trading_day)),
            jobs.reload_master,
        ),
        JobSpec(
            PRELOAD_TIER_B,
            "Sends the Tier B plan as one make-before-break replacement; also at start-up while a session is open.",
            DailyAt(settings.scheduler_preload_tier_b_at, _on(is_trading_day)),
            jobs.preload_tier_b,
            catch_up_while=sessions.contains,
        ),
        JobSpec(
            RECENTER_CHAINS,
            "Re-centres every Tier B chain and Tier A unit whose underlying has moved past the hysteresis.",
            Every(settings.scheduler_recenter_seconds, sessions),
            jobs.recenter_chains,
            dated=False,
            window=sessions,
        ),
        JobSpec(
            END_OF_DAY,
            "Clears Tier A (units, then watchlists) for the trading date; Tier B stays.",
            DailyAt(settings.scheduler_end_of_day_at, _on(is_trading_day)),
            jobs.end_of_day,
            not_before=settings.scheduler_end_of_day_at,
        ),
        JobSpec(
            RELEASE_MCX,
            "At the MCX close, sends the Tier B plan in force again without its MCX chains, until the next preload.",
            _at_mcx_close(settings),
            jobs.release_mcx,
            is_day=is_mcx_trading_day,
        ),
    ]
    disabled = set(settings.scheduler_disabled_jobs)
    return {
        spec.name: dataclasses.replace(spec, enabled=spec.name not in disabled)
        for spec in sorted(specs, key=lambda s: s.name)
    }
