"""Scheduler server. Until its issue lands the RPCs answer UNIMPLEMENTED (the generated
base servicer), while health, reflection and the interceptors already work."""

from __future__ import annotations

from dataclasses import dataclass

from dataserver.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from services.common.auth import Authenticator
from services.common.config import Settings
from services.common.db import Pool
from services.common.server import GrpcApp, build_app, run_service

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
DEFAULT_PORT = 50055


@dataclass
class Scheduler:
    app: GrpcApp


def create_server(settings: Settings, pool: Pool) -> Scheduler:
    servicer = scheduler_pb2_grpc.SchedulerServiceServicer()
    return Scheduler(
        build_app(
            [SERVICE_NAME],
            lambda server: scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server),
            host=settings.grpc_host,
            port=settings.grpc_port,
            authenticator=Authenticator(settings.auth_mode, pool),
            grace=settings.shutdown_grace_seconds,
        )
    )


def serve() -> None:
    run_service("scheduler", DEFAULT_PORT, create_server)
