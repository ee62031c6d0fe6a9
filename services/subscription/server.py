"""Subscription server. Until its issue lands the RPCs answer UNIMPLEMENTED (the generated
base servicer), while health, reflection and the interceptors already work."""

from __future__ import annotations

import asyncio

from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.auth import Authenticator
from services.common.config import Settings
from services.common.server import GrpcApp, build_app, serve_service

SERVICE_NAME = subscription_pb2.DESCRIPTOR.services_by_name["SubscriptionService"].full_name
DEFAULT_PORT = 50052


def create_server(settings: Settings, pool: AsyncConnectionPool) -> GrpcApp:
    servicer = subscription_pb2_grpc.SubscriptionServiceServicer()
    return build_app(
        [SERVICE_NAME],
        lambda server: subscription_pb2_grpc.add_SubscriptionServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
    )


async def _create(settings: Settings, pool: AsyncConnectionPool | None) -> GrpcApp:
    assert pool is not None
    return create_server(settings, pool)


def serve() -> None:
    asyncio.run(serve_service("subscription", DEFAULT_PORT, _create))
