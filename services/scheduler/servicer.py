"""The SchedulerService RPCs: list jobs, run one now, list runs. Every replica answers."""

from __future__ import annotations

import asyncio
from datetime import date

import grpc
from dataserver.scheduler.v1 import scheduler_pb2 as pb
from dataserver.scheduler.v1 import scheduler_pb2_grpc

from services.common.auth import require_privileged
from services.common.clock import Clock
from services.common.db import Pool
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.pagination import (
    decode_page_token,
    encode_page_token,
    fingerprint,
    next_token,
    page_size,
)
from services.scheduler.catalog import JobSpec
from services.scheduler.convert import OUTCOME_NAMES, TRIGGER_NAMES, job_proto, run_proto
from services.scheduler.leader import LeaderLock
from services.scheduler.loop import ScheduleLoop
from services.scheduler.runner import MANUAL, JobRunner
from services.scheduler.runs import JobRuns, Row, RunFilter

PAGE_DEFAULT, PAGE_MAX = 50, 500


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(
        self,
        catalog: dict[str, JobSpec],
        runner: JobRunner,
        runs: JobRuns,
        loop: ScheduleLoop,
        leader: LeaderLock,
        clock: Clock,
        pool: Pool,
    ) -> None:
        self._catalog = catalog
        self._runner = runner
        self._runs = runs
        self._loop = loop
        self._leader = leader
        self._clock = clock
        self._pool = pool
        self._manual: set[asyncio.Task[Row | None]] = set()

    def _spec(self, name: str, field: str = "name") -> JobSpec:
        if not name:
            raise InvalidArgument(f"{field} is required; the jobs are {list(self._catalog)}")
        spec = self._catalog.get(name)
        if spec is None:
            raise NotFound(f"no job {name!r}; the jobs are {list(self._catalog)}")
        return spec

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        size = page_size(request.page_size, default=PAGE_DEFAULT, maximum=PAGE_MAX)
        key = fingerprint("jobs")
        offset = decode_page_token(request.page_token, key)
        specs = list(self._catalog.values())[offset : offset + size]
        last = await self._runs.last_runs([s.name for s in specs])
        now = self._clock.now()
        return pb.ListJobsResponse(
            jobs=[
                job_proto(
                    s, last.get(s.name), self._loop.next_run(s, now, last.get(s.name)), leader=self._leader.is_leader
                )
                for s in specs
            ],
            next_page_token=next_token(offset, len(specs), len(self._catalog), key),
            replica_id=self._runner.replica,
            leader_replica_id=await LeaderLock.current_leader(self._pool),
        )

    async def RunJob(self, request: pb.RunJobRequest, context: grpc.aio.ServicerContext) -> pb.RunJobResponse:
        principal = require_privileged("RunJob")
        spec = self._spec(request.name)
        now = self._clock.now()
        skip = ""
        if not request.force:
            spec.check_manual(now)
            skip = spec.manual_skip(now)
        run = self._runner.run(
            spec, MANUAL, now.date() if spec.dated else None, actor=f"admin:{principal.user_id}", skip=skip
        )
        # A caller that goes away does not cut the run short: it ends and is recorded.
        task = asyncio.ensure_future(run)
        self._manual.add(task)
        task.add_done_callback(self._manual_ended)
        record = await asyncio.shield(task)
        if record is None:  # manual runs claim no date, so this is not expected
            raise FailedPrecondition(f"{spec.name} could not start")
        proto = run_proto(record)
        return pb.RunJobResponse(run_id=proto.run_id, outcome=proto.outcome, run=proto)

    def _manual_ended(self, task: asyncio.Task[Row | None]) -> None:
        self._manual.discard(task)
        if not task.cancelled():
            task.exception()  # marked retrieved: the run is recorded whether or not its caller waited

    async def ListJobRuns(
        self, request: pb.ListJobRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobRunsResponse:
        if request.job_name:
            self._spec(request.job_name, "job_name")
        if request.outcome not in (0, *OUTCOME_NAMES) or request.trigger not in (0, *TRIGGER_NAMES):
            raise InvalidArgument("outcome or trigger is not a value the contract defines")
        where = RunFilter(
            job=request.job_name,
            outcome=OUTCOME_NAMES.get(request.outcome, ""),
            trigger=TRIGGER_NAMES.get(request.trigger, ""),
            trading_date=_date(request.trading_date),
        )
        size = page_size(request.page_size, default=PAGE_DEFAULT, maximum=PAGE_MAX)
        key = fingerprint(where)
        # The token carries the last run id returned (not an offset): see runs.sql list_runs.
        before = decode_page_token(request.page_token, key)
        rows = await self._runs.page(where, before, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListJobRunsResponse(
            job_runs=[run_proto(r) for r in rows],
            next_page_token=encode_page_token(rows[-1]["run_id"], key) if more else "",
        )


def _date(text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"trading_date {text!r} is malformed: expected YYYY-MM-DD") from None
