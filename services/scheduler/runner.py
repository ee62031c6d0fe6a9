"""Runs one job once: under its cross-replica lock, recorded from start to end, measured.

The same path serves the schedule, the leader's start-up catch-up and RunJob, so every run
is recorded the same way and a run on one replica excludes a run on any other.
"""

from __future__ import annotations

import logging
import time
from datetime import date

from services.common.clock import Clock
from services.common.errors import FailedPrecondition, ServiceError
from services.scheduler.catalog import JobSpec
from services.scheduler.jobs import JobResult
from services.scheduler.metrics import record_run
from services.scheduler.runs import JobRuns, Row

log = logging.getLogger(__name__)

SCHEDULE, STARTUP, MANUAL = "schedule", "startup", "manual"
SUCCEEDED, FAILED, SKIPPED = "succeeded", "failed", "skipped"


class JobBusy(FailedPrecondition):
    """A run of the job is in progress on some replica."""


class JobRunner:
    def __init__(self, runs: JobRuns, clock: Clock, replica: str) -> None:
        self._runs = runs
        self._clock = clock
        self.replica = replica

    async def run(
        self, spec: JobSpec, trigger: str, trading_date: date | None, *, actor: str = "", skip: str = ""
    ) -> Row | None:
        """Runs `spec` for `trading_date` (None for an undated job) and returns the finished
        record; None when a scheduled run has already claimed the date. `skip`: record a
        skipped run with this reason instead of acting. JobBusy when a run is in progress."""
        async with self._runs.exclusive(spec.name) as held:
            if not held:
                raise JobBusy(f"{spec.name} is already running (on this or another replica); wait for it to end")
            await self._runs.abandon_running(spec.name, self._clock.now())
            record = await self._runs.start(spec.name, trading_date, trigger, self._clock.now(), self.replica, actor)
            if record is None:
                return None
            return await self._act(spec, record, trading_date or self._clock.now().date(), skip)

    async def _act(self, spec: JobSpec, record: Row, trading_date: date, skip: str) -> Row:
        started = time.monotonic()
        # Re-centring runs every few seconds: its runs are logged when they fail or move something.
        routine = logging.INFO if spec.dated else logging.DEBUG
        log.log(
            routine, "job started", extra={"job": spec.name, "run_id": record["run_id"], "trigger": record["trigger"]}
        )
        try:
            result = JobResult(skipped=skip) if skip else await spec.action(trading_date)
            outcome, error = (SKIPPED, result.skipped) if result.skipped else (SUCCEEDED, "")
        except ServiceError as failure:
            result, outcome, error = JobResult(), FAILED, failure.message
        except Exception as failure:  # recorded and logged; the scheduler keeps running the other jobs
            log.exception("job raised", extra={"job": spec.name, "run_id": record["run_id"]})
            result, outcome, error = JobResult(), FAILED, f"{type(failure).__name__}: {failure}"
        finished = await self._runs.finish(record["run_id"], outcome, self._clock.now(), result.counts, error)
        seconds = time.monotonic() - started
        record_run(spec.name, outcome, seconds, result.counts)
        if outcome == FAILED:
            routine = logging.WARNING
        elif result.counts.get("chains_moved"):
            routine = logging.INFO
        log.log(
            routine,
            "job ended",
            extra={
                "job": spec.name,
                "run_id": record["run_id"],
                "outcome": outcome,
                "error": error,
                "seconds": seconds,
            },
        )
        return finished
