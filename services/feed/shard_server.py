"""Feed shard server: one broker connection, its assignment, and the stream to the gateway.

Shards hold no database connection: they are reached only by the gateway, in-cluster, and
reach only the subscription service and the broker.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataserver.feed.v1 import shard_pb2, shard_pb2_grpc

from services.common.auth import Authenticator
from services.common.clients import open_channel
from services.common.config import Settings
from services.common.server import GrpcApp, build_app, run_service_without_database
from services.common.tls import server_credentials
from services.feed.shard.health_report import HealthReporter
from services.feed.shard.runtime import ShardRuntime
from services.feed.shard.servicer import ShardServicer

SERVICE_NAME = shard_pb2.DESCRIPTOR.services_by_name["ShardService"].full_name
DEFAULT_PORT = 50054


@dataclass
class Shard:
    app: GrpcApp
    runtime: ShardRuntime
    health: HealthReporter


def create_server(settings: Settings) -> Shard:
    channel = open_channel(settings.subscription_addr)
    runtime = ShardRuntime(settings, channel)
    servicer = ShardServicer(runtime)
    app = build_app(
        [SERVICE_NAME],
        lambda server: shard_pb2_grpc.add_ShardServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        # No database here: the shard accepts the deployment's service key (the gateway's).
        authenticator=Authenticator(settings.auth_mode, None, service_token=settings.service_token),
        grace=settings.shutdown_grace_seconds,
        tls=server_credentials(settings),
    )
    runtime.on_health = lambda serving: app.spawn(app.set_serving(serving), "shard-health")
    reporter = HealthReporter(runtime, channel, settings.service_token)

    async def start_background() -> None:
        runtime.start(app.spawn)
        app.spawn(reporter.run(), f"shard-{settings.shard_id}-health-report")

    app.before_serving.append(start_background)
    app.on_stop.extend((runtime.close, channel.close))
    return Shard(app, runtime, reporter)


def serve() -> None:
    run_service_without_database("feed-shard", DEFAULT_PORT, create_server)
