"""Feed shard server (one broker connection each; internal stream to the gateway). Until
the feed issue lands the RPCs answer UNIMPLEMENTED, while health and reflection work.

Shards hold no database connection: they are reached only by the gateway, in-cluster.
"""

from __future__ import annotations

from dataserver.feed.v1 import shard_pb2, shard_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.config import Settings
from services.common.server import GrpcApp, build_app

SERVICE_NAME = shard_pb2.DESCRIPTOR.services_by_name["ShardService"].full_name
DEFAULT_PORT = 50054


def create_server(settings: Settings) -> GrpcApp:
    servicer = shard_pb2_grpc.ShardServiceServicer()
    return build_app(
        [SERVICE_NAME],
        lambda server: shard_pb2_grpc.add_ShardServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=None,
    )


async def create(settings: Settings, pool: AsyncConnectionPool | None) -> GrpcApp:
    return create_server(settings)
