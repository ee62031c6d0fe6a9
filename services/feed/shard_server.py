"""Feed shard server: one broker connection, its assignment, and the stream to the gateway.

Shards hold no database connection: they are reached only by the gateway, in-cluster, and
reach only the subscription service and the broker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dataserver.feed.v1 import shard_pb2, shard_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.clients import open_channel
from services.common.config import Settings
from services.common.server import GrpcApp, build_app
from services.feed.shard.runtime import ShardRuntime
from services.feed.shard.servicer import ShardServicer

SERVICE_NAME = shard_pb2.DESCRIPTOR.services_by_name["ShardService"].full_name
DEFAULT_PORT = 50054


@dataclass
class Shard:
    app: GrpcApp
    runtime: ShardRuntime


def create_server(settings: Settings) -> Shard:
    channel = open_channel(settings.subscription_addr)
    runtime = ShardRuntime(settings, channel)
    servicer = ShardServicer(runtime)
    app = build_app(
        [SERVICE_NAME],
        lambda server: shard_pb2_grpc.add_ShardServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=None,
    )
    runtime.on_health = lambda serving: asyncio.ensure_future(app.set_serving(serving))

    async def start() -> None:
        runtime.start()

    async def stop() -> None:
        await runtime.stop()
        await channel.close()

    app.until_ready = start
    app.on_stop.append(stop)
    return Shard(app, runtime)


async def create(settings: Settings, pool: AsyncConnectionPool | None) -> GrpcApp:
    return create_server(settings).app
