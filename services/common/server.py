"""Server bootstrap shared by every service: health, reflection, interceptors, the port,
and a SIGTERM-driven graceful drain.

Each service has `create_server(...)` (builds a `GrpcApp`, binds, does not start) apart from
`serve()` (reads config, opens dependencies, runs until signalled), as in grpc/grpc's
asyncio examples, so tests start the real server on port 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from psycopg_pool import AsyncConnectionPool

from services.common.auth import Authenticator
from services.common.config import Settings, load_settings
from services.common.db import open_pool, resolve_database_url
from services.common.interceptors import ServerInterceptor
from services.common.jsonlog import configure_logging
from services.common.metrics import start_metrics_server
from services.common.migrate import migrate

log = logging.getLogger(__name__)

_MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass
class GrpcApp:
    """A bound, not yet started gRPC server with its health service."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    port: int
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The service's own dependencies (a loaded master, an upstream stream); health says
    # SERVING only after this returns.
    until_ready: Callable[[], Awaitable[None]] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        # The health servicer starts out SERVING; nothing is ready before `until_ready`.
        await self.set_serving(False)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Drains: NOT_SERVING first so balancers stop sending, then in-flight RPCs finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for callback in reversed(self.on_stop):
            await callback()


def build_app(
    service_names: Sequence[str],
    register: Callable[[grpc.aio.Server], None],
    *,
    host: str,
    port: int,
    authenticator: Authenticator | None,
) -> GrpcApp:
    """Creates the server with the shared interceptors, health (NOT_SERVING) and reflection."""
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(authenticator)],
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind gRPC port {host}:{port}")
    return GrpcApp(server=server, health=health_servicer, service_names=tuple(service_names), port=bound)


async def run_until_signalled(app: GrpcApp, grace: float) -> None:
    """Runs a started app until SIGTERM or SIGINT, then drains it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", extra={"port": app.port, "services": list(app.service_names)})
    await stop.wait()
    log.info("draining", extra={"grace_seconds": grace})
    await app.stop(grace)
    log.info("stopped")


CreateApp = Callable[[Settings, AsyncConnectionPool | None], Awaitable[GrpcApp]]


async def serve_service(
    service: str,
    default_port: int,
    create: CreateApp,
    *,
    needs_database: bool = True,
) -> None:
    """The `serve()` of every service: config, logs, database, metrics, start, drain.

    Health stays NOT_SERVING until the app's `until_ready` returns.
    """
    settings = load_settings(grpc_port=default_port)
    configure_logging(service, settings.log_level)
    pool: AsyncConnectionPool | None = None
    if needs_database:
        conninfo = resolve_database_url(settings)
        await migrate(conninfo)
        pool = await open_pool(conninfo, max_size=settings.db_pool_max_size, name=service)
    app = await create(settings, pool)
    if pool is not None:
        app.on_stop.append(pool.close)
    metrics_port = start_metrics_server(settings.metrics_port, settings.grpc_host)
    await app.start()
    log.info("started", extra={"port": app.port, "metrics_port": metrics_port})
    if app.until_ready is not None:
        await app.until_ready()
    await app.set_serving(True)
    await run_until_signalled(app, settings.shutdown_grace_seconds)
