"""Scheduler server: the jobs of the trading day, fired by the one leader replica on an
injected clock, recorded in Postgres, and listed or run through SchedulerService."""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

from dataserver.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common.auth import Authenticator
from services.common.clients import open_channel
from services.common.clock import Clock, clock_from_settings
from services.common.config import Settings
from services.common.db import Pool
from services.common.server import GrpcApp, build_app, run_service
from services.common.tls import server_credentials
from services.scheduler.catalog import JobSpec, build_catalog
from services.scheduler.jobs import Jobs, PlanSource
from services.scheduler.leader import LeaderLock
from services.scheduler.loop import ScheduleLoop
from services.scheduler.plan import load_plan
from services.scheduler.runner import JobRunner
from services.scheduler.runs import JobRuns
from services.scheduler.servicer import SchedulerServicer

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
DEFAULT_PORT = 50055


@dataclass
class Scheduler:
    app: GrpcApp
    catalog: dict[str, JobSpec]
    leader: LeaderLock
    loop: ScheduleLoop
    replica: str


def replica_id(settings: Settings) -> str:
    return settings.scheduler_replica_id or f"{socket.gethostname()}:{os.getpid()}"


def create_server(
    settings: Settings, pool: Pool, *, clock: Clock | None = None, plan: PlanSource | None = None
) -> Scheduler:
    clock = clock or clock_from_settings(settings)
    if plan is None:
        load_plan(settings.tier_b_plan_file)  # checked at start-up: a bad file stops the process
        # Read again at each run, so an edited plan takes effect at the next preload.
        plan = functools.partial(load_plan, settings.tier_b_plan_file)
    replica = replica_id(settings)
    registry, subscription = open_channel(settings.registry_addr), open_channel(settings.subscription_addr)
    jobs = Jobs(
        registry,
        subscription,
        settings.service_token,
        plan=plan,
        timeout=settings.scheduler_call_timeout_seconds,
        hysteresis_strikes=settings.scheduler_recenter_hysteresis_strikes,
        reload_at=settings.scheduler_reload_master_at,
    )
    catalog = build_catalog(settings, jobs)
    runs = JobRuns(pool)
    runner = JobRunner(runs, clock, replica)
    leader = LeaderLock(_conninfo(pool), replica)
    loop = ScheduleLoop(
        catalog,
        runner,
        runs,
        leader,
        clock,
        grace=timedelta(seconds=settings.scheduler_misfire_grace_seconds),
        retry=timedelta(seconds=settings.scheduler_retry_seconds),
    )
    servicer = SchedulerServicer(catalog, runner, runs, loop, leader, clock, pool)
    app = build_app(
        [SERVICE_NAME],
        lambda server: scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
        grace=settings.shutdown_grace_seconds,
        tls=server_credentials(settings),
    )

    async def start() -> None:
        app.spawn(leader.run(settings.scheduler_leader_poll_seconds), "scheduler-leader")
        app.spawn(loop.run(settings.scheduler_poll_seconds), "scheduler-loop")

    async def stop() -> None:
        await leader.close()  # released at once, so another replica leads within its poll
        await registry.close()
        await subscription.close()

    app.before_serving.append(start)
    app.on_stop.append(stop)
    return Scheduler(app, catalog, leader, loop, replica)


def _conninfo(pool: Pool) -> str:
    """The database of the leader lock's own connection: the pool's."""
    if not isinstance(pool.conninfo, str):
        raise TypeError("the pool's conninfo is computed; the leader lock needs a plain conninfo")
    return pool.conninfo


def serve() -> None:
    run_service("scheduler", DEFAULT_PORT, create_server)
