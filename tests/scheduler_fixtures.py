"""A real scheduler on port 0 over a test database, driven by a ManualClock, beside a real
registry and subscription service (tests/subscription_fixtures.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from dataserver.scheduler.v1 import scheduler_pb2 as pb
from dataserver.scheduler.v1 import scheduler_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as sub_pb

from services.common.clock import ManualClock
from services.common.db import Pool, open_pool
from services.common.keys import key_proto
from services.common.market_calendar import IST
from services.scheduler.catalog import JOB_NAMES
from services.scheduler.server import Scheduler, create_server
from tests.feed_fixtures import eventually
from tests.subscription_fixtures import SubscriptionUnderTest

# Friday 2026-11-20, the registry fixture's trading date; Monday 2026-11-23 is the next.
FRIDAY, MONDAY = datetime(2026, 11, 20, tzinfo=IST), datetime(2026, 11, 23, tzinfo=IST)


def at(day: datetime, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute, second=second)


def small_plan() -> sub_pb.SetTierBPlanRequest:
    """A Tier B plan over what the small generated master lists: one NSE and one MCX chain,
    and the NIFTY index value."""
    return sub_pb.SetTierBPlanRequest(
        chains=[
            sub_pb.TierBChain(underlying_symbol=s, nearest_expiries=1, strikes_each_side=3, include_underlying=True)
            for s in ("NIFTY", "CRUDEOIL")
        ],
        instruments=[sub_pb.TierBInstrument(key=key_proto(("IDX_I", 13)))],
    )


def only(*jobs: str) -> tuple[str, ...]:
    """The disabled-jobs setting that leaves only `jobs` on schedule."""
    return tuple(name for name in JOB_NAMES if name not in jobs)


@dataclass
class SchedulerUnderTest:
    stub: scheduler_pb2_grpc.SchedulerServiceStub
    scheduler: Scheduler
    clock: ManualClock
    pool: Pool
    admin: tuple[tuple[str, str], ...]

    async def runs(self, job: str = "") -> list[pb.JobRun]:
        """Every run, oldest first."""
        reply = await self.stub.ListJobRuns(pb.ListJobRunsRequest(job_name=job, page_size=500), metadata=self.admin)
        return list(reversed(reply.job_runs))

    async def ended(self, job: str, count: int = 1) -> list[pb.JobRun]:
        """Waits until `job` has `count` ended runs; returns them, oldest first."""

        async def finished() -> list[pb.JobRun] | None:
            done = [r for r in await self.runs(job) if r.outcome != pb.JOB_RUN_OUTCOME_RUNNING]
            return done if len(done) >= count else None

        return await eventually(finished, what=f"{count} ended runs of {job}")

    async def passes(self, n: int = 3) -> None:
        """Waits for `n` more passes of the leader's schedule loop."""
        loop = self.scheduler.loop
        target = loop.passes + n
        await eventually(lambda: loop.passes >= target, what="schedule passes")


@asynccontextmanager
async def running_scheduler(
    subscription: SubscriptionUnderTest, conninfo: str, clock: ManualClock, *, lead: bool = True, **overrides: Any
) -> AsyncIterator[SchedulerUnderTest]:
    """`lead`: wait until this scheduler leads (the only one on its database does)."""
    settings = dataclasses.replace(
        subscription.settings,
        **{
            "subscription_addr": subscription.address,
            "scheduler_poll_seconds": 0.02,
            "scheduler_leader_poll_seconds": 0.1,
            "scheduler_retry_seconds": 60.0,
            "scheduler_replica_id": "replica-a",
            **overrides,
        },
    )
    pool = await open_pool(conninfo, max_size=6)
    scheduler = create_server(settings, pool, clock=clock, plan=small_plan)
    try:
        async with scheduler.app, grpc.aio.insecure_channel(scheduler.app.address) as channel:
            under_test = SchedulerUnderTest(
                scheduler_pb2_grpc.SchedulerServiceStub(channel), scheduler, clock, pool, subscription.admin
            )
            if lead:
                await eventually(lambda: scheduler.leader.is_leader, what="leadership")
            yield under_test
    finally:
        await pool.close()
