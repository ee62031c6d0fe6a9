"""Scheduler server. Until its issue lands the RPCs answer UNIMPLEMENTED (the generated
base servicer), while health, reflection and the interceptors already work."""

from __future__ import annotations

import uvloop
from dataserver.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.auth import Authenticator
from services.common.config import Settings
from services.common.server import GrpcApp, build_app, serve_service

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
DEFAULT_PORT = 50055


def create_server(settings: Settings, pool: AsyncConnectionPool) -> GrpcApp:
    servicer = scheduler_pb2_grpc.SchedulerServiceServicer()
    return build_app(
        [SERVICE_NAME],
        lambda server: scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
    )


async def _create(settings: Settings, pool: AsyncConnectionPool | None) -> GrpcApp:
    assert pool is not None
    return create_server(settings, pool)


def serve() -> None:
    uvloop.run(serve_service("scheduler", DEFAULT_PORT, _create))
