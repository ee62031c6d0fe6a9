"""The leader's schedule: every few (real) seconds it asks the clock what time it is and runs
what is due, so an injected clock drives a whole trading day and a test waits for runs, not
for time.

A dated job is due when its latest fire time lies within the misfire grace (or, for the
preload, while a session is open) and no scheduled run has claimed that trading date; the
claim is the run record's unique key, so a restart or another replica never repeats it. A
run found owed when a replica starts leading is recorded as a start-up catch-up.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, time, timedelta

import psycopg

from services.common.clock import Clock
from services.common.errors import ServiceError
from services.scheduler.catalog import JobSpec
from services.scheduler.leader import LeaderLock
from services.scheduler.runner import FAILED, MANUAL, SCHEDULE, STARTUP, JobBusy, JobRunner
from services.scheduler.runs import JobRuns, Row
from services.scheduler.schedules import last_fire

log = logging.getLogger(__name__)

_TICK = timedelta(microseconds=1)
UNDATED_RETENTION = timedelta(days=7)


class ScheduleLoop:
    def __init__(
        self,
        catalog: dict[str, JobSpec],
        runner: JobRunner,
        runs: JobRuns,
        leader: LeaderLock,
        clock: Clock,
        *,
        grace: timedelta,
        retry: timedelta,
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self._runs = runs
        self._leader = leader
        self._clock = clock
        self._grace = grace
        self._retry = retry
        self._leading_since: datetime | None = None
        self._done: set[tuple[str, date]] = set()  # dated runs known to be claimed
        self._retry_at: dict[str, datetime] = {}  # a dated job that failed waits until then
        self._next_undated: dict[str, datetime | None] = {}
        self._pruned: date | None = None
        self.passes = 0  # passes made while leading: what a test waits for before asserting nothing ran

    async def run(self, poll_seconds: float) -> None:
        """Runs due jobs while this replica leads, until cancelled."""
        while True:
            if self._leader.is_leader:
                try:
                    await self.run_due()
                except (psycopg.Error, ServiceError) as error:  # Postgres away: try again next poll
                    log.warning("schedule pass failed", extra={"error": str(error)})
                self.passes += 1
            else:
                self._leading_since = None
            await asyncio.sleep(poll_seconds)

    async def run_due(self) -> None:
        now = self._clock.now()
        if self._leading_since is None:
            self._leading_since = now
            self._next_undated.clear()
        for fire, spec in sorted(self._due_dated(now), key=lambda due: due[0]):
            await self._run_dated(spec, fire)
        for spec in self._catalog.values():
            if spec.enabled and not spec.dated:
                await self._run_undated(spec)
        await self._prune(now)

    def owed(self, spec: JobSpec, now: datetime) -> datetime | None:
        """The fire time `spec` still owes a run for at `now`, claimed or not."""
        fire = last_fire(spec.schedule, now, self._grace)
        if fire is None and spec.catch_up_while is not None and spec.catch_up_while(now):
            start_of_day = datetime.combine(now.date(), time(0), now.tzinfo)
            fire = last_fire(spec.schedule, now, now - start_of_day)
        return fire

    def _due_dated(self, now: datetime) -> list[tuple[datetime, JobSpec]]:
        due = []
        for spec in self._catalog.values():
            if not (spec.enabled and spec.dated) or self._retry_at.get(spec.name, now) > now:
                continue
            fire = self.owed(spec, now)
            if fire is not None and (spec.name, fire.date()) not in self._done:
                due.append((fire, spec))
        return due

    async def _run_dated(self, spec: JobSpec, fire: datetime) -> None:
        assert self._leading_since is not None
        trigger = STARTUP if fire < self._leading_since else SCHEDULE
        try:
            record = await self._runner.run(spec, trigger, fire.date())
        except JobBusy:
            return  # a manual run is in progress; look again next poll
        if record is not None and record["outcome"] == FAILED:
            self._retry_at[spec.name] = self._clock.now() + self._retry
            return
        self._done.add((spec.name, fire.date()))

    async def _run_undated(self, spec: JobSpec) -> None:
        now = self._clock.now()
        if spec.name not in self._next_undated:
            self._next_undated[spec.name] = spec.schedule.next_fire(now)
        due = self._next_undated[spec.name]
        if due is None or due > now:
            return
        try:
            await self._runner.run(spec, SCHEDULE, None)
        except JobBusy:
            return
        self._next_undated[spec.name] = spec.schedule.next_fire(self._clock.now() + _TICK)

    def next_run(self, spec: JobSpec, now: datetime, last: Row | None) -> datetime | None:
        """When `spec` next runs on schedule (a past time: overdue, it runs at a leader's next
        poll); None when disabled. `last`: its latest run."""
        if not spec.enabled:
            return None
        if not spec.dated:
            if self._leader.is_leader and spec.name in self._next_undated:
                return self._next_undated[spec.name]
            return spec.schedule.next_fire(now)
        owed = self.owed(spec, now)
        if owed is not None and (spec.name, owed.date()) not in self._done and not _claims(last, owed.date()):
            return owed
        return spec.schedule.next_fire(now + _TICK)

    async def _prune(self, now: datetime) -> None:
        if self._pruned != now.date():
            self._pruned = now.date()
            await self._runs.prune_undated(now - UNDATED_RETENTION)


def _claims(run: Row | None, day: date) -> bool:
    """Whether `run` is a scheduled run that holds `day`."""
    return run is not None and run["trading_date"] == day and run["trigger"] != MANUAL and run["outcome"] != FAILED
