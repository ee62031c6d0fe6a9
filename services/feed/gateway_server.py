"""Feed gateway server (terminal-facing tick stream). Until the feed issue lands the RPCs
answer UNIMPLEMENTED, while health, reflection and the interceptors already work."""

from __future__ import annotations

from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.auth import Authenticator
from services.common.config import Settings
from services.common.server import GrpcApp, build_app

SERVICE_NAME = feed_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
DEFAULT_PORT = 50053


def create_server(settings: Settings, pool: AsyncConnectionPool) -> GrpcApp:
    servicer = feed_pb2_grpc.GatewayServiceServicer()
    return build_app(
        [SERVICE_NAME],
        lambda server: feed_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
    )


async def create(settings: Settings, pool: AsyncConnectionPool | None) -> GrpcApp:
    assert pool is not None
    return create_server(settings, pool)
