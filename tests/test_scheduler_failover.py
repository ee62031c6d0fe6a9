"""Two real scheduler processes on one database: one leads; when it is killed with SIGKILL
(no chance to release anything) the other leads within 15 s."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from dataserver.scheduler.v1 import scheduler_pb2 as pb
from dataserver.scheduler.v1 import scheduler_pb2_grpc

from services.scheduler.catalog import JOB_NAMES
from tests.feed_fixtures import eventually, start_logged_service

FAILOVER_LIMIT_SECONDS = 15.0


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(database_url: str, tmp_path: Path) -> AsyncIterator[dict[str, tuple[subprocess.Popen[bytes], int]]]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "AUTH_MODE": "dev",
        "GRPC_PORT": "0",
        "LOG_LEVEL": "INFO",  # the "started" line carries the port
        "REGISTRY_ADDR": "127.0.0.1:1",
        "SUBSCRIPTION_ADDR": "127.0.0.1:1",
        # Leadership is what is tested here; firing on a clock is tested in-process.
        "SCHEDULER_DISABLED_JOBS": ",".join(JOB_NAMES),
        "SCHEDULER_LEADER_POLL_SECONDS": "1",
    }
    started = {
        name: await start_logged_service(
            "services.scheduler", {**env, "SCHEDULER_REPLICA_ID": name}, tmp_path / f"{name}.log"
        )
        for name in ("replica-a", "replica-b")
    }
    try:
        yield started
    finally:
        for process, _ in started.values():
            if process.poll() is None:
                process.terminate()
        for process, _ in started.values():
            process.wait(timeout=30)


async def list_jobs(port: int) -> pb.ListJobsResponse | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return await scheduler_pb2_grpc.SchedulerServiceStub(channel).ListJobs(pb.ListJobsRequest(), timeout=5)
        except grpc.aio.AioRpcError:
            return None


async def test_the_other_replica_leads_within_15_s_of_a_kill_9(replicas) -> None:
    async def agreed_leader() -> str | None:
        replies = {name: await list_jobs(port) for name, (_, port) in replicas.items()}
        if any(r is None for r in replies.values()):
            return None
        leaders = {r.leader_replica_id for r in replies.values() if r is not None}
        leading = [name for name, r in replies.items() if r is not None and r.jobs[0].leader]
        if len(leaders) == 1 and leading == list(leaders):
            return leading[0]
        return None

    leader = await eventually(agreed_leader, timeout=30, what="one leader both replicas agree on")
    [survivor] = [name for name in replicas if name != leader]
    process, _ = replicas[leader]
    killed = time.monotonic()
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)

    async def survivor_leads() -> bool:
        reply = await list_jobs(replicas[survivor][1])
        return reply is not None and reply.jobs[0].leader and reply.leader_replica_id == survivor

    await eventually(survivor_leads, timeout=FAILOVER_LIMIT_SECONDS, what=f"{survivor} leading")
    assert time.monotonic() - killed < FAILOVER_LIMIT_SECONDS
