"""Feed gateway server: the terminal-facing tick streams, fed by every shard."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from dataserver.feed.v1 import feed_pb2
from dataserver.registry.v1 import registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.auth import Authenticator
from services.common.clients import ServiceCaller, open_channel
from services.common.config import Settings
from services.common.looplag import watch_loop_lag
from services.common.server import GrpcApp, build_app
from services.feed.gateway.hub import Hub
from services.feed.gateway.servicer import GatewayServicer, register

SERVICE_NAME = feed_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
DEFAULT_PORT = 50053


@dataclass
class Gateway:
    app: GrpcApp
    hub: Hub
    servicer: GatewayServicer


def create_server(settings: Settings, pool: AsyncConnectionPool | None) -> Gateway:
    hub = Hub(settings.gateway_shard_addrs, gateway_id=f"gateway-{uuid.uuid4().hex[:8]}")
    subscription_channel = open_channel(settings.subscription_addr)
    registry_channel = open_channel(settings.registry_addr)
    servicer = GatewayServicer(
        hub,
        subscription_pb2_grpc.SubscriptionServiceStub(subscription_channel),
        registry_pb2_grpc.RegistryServiceStub(registry_channel),
        ServiceCaller("subscription", settings.service_token),
        batch_seconds=settings.gateway_batch_seconds,
    )
    app = build_app(
        [SERVICE_NAME],
        lambda server: register(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
    )
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        hub.start()
        tasks.append(asyncio.create_task(servicer.dispatcher.run(), name="gateway-dispatcher"))
        tasks.append(asyncio.create_task(servicer.check_streams(), name="gateway-stream-checks"))
        tasks.append(asyncio.create_task(watch_loop_lag(), name="gateway-loop-lag"))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await hub.stop()
        await subscription_channel.close()
        await registry_channel.close()

    app.until_ready = start
    app.on_stop.append(stop)
    return Gateway(app, hub, servicer)


async def create(settings: Settings, pool: AsyncConnectionPool | None) -> GrpcApp:
    return create_server(settings, pool).app
