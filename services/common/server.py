"""Server bootstrap shared by every service: health, reflection, interceptors, the port, the
service's background tasks, and a SIGTERM-driven graceful drain.

Each service has `create_server(settings, pool)` (builds a `GrpcApp`, binds, registers its
start-up work, starts nothing) apart from `serve()` (reads config, opens dependencies, runs
until signalled), as in grpc/grpc's asyncio examples, so tests start the real server on port
0 with `async with create_server(...).app:`. Serving is an async context manager, as
websockets' `serve()` is: entering starts the server, runs the start-up work and turns health
SERVING; leaving drains it.

Long-lived work runs through `GrpcApp.spawn`: a task that fails is logged with its name, turns
health NOT_SERVING and stops the process with a non-zero exit, so a supervisor restarts it
rather than it serving half-broken (a batching loop that died under a healthy status).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, cast

import grpc
import uvloop
from google.protobuf import descriptor, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.auth import Authenticator
from services.common.config import Settings, load_settings
from services.common.db import Pool, open_pool, resolve_database_url
from services.common.interceptors import AccessLog, ServerInterceptor
from services.common.jsonlog import configure_logging
from services.common.metrics import start_metrics_server
from services.common.migrate import migrate
from services.common.ratelimit import RateLimiter
from services.common.tasks import cancel_and_wait
from services.common.tls import configure_client_tls

log = logging.getLogger(__name__)

_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
EXIT_TASK_FAILED = 1


@dataclass(eq=False)
class GrpcApp:
    """A bound gRPC server with its health service, its start-up work and its background tasks."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    port: int
    access_log: AccessLog  # its slow threshold is the process's setting once `serve_app` runs it
    grace: float = 0.0  # how long a drain lets in-flight RPCs finish
    # Start-up work (load the master, start following the shards): health says SERVING only
    # once all of it has returned.
    before_serving: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Work between health turning NOT_SERVING and the server's stop, in order: what long-lived
    # streams need to end well (a gateway tells its terminals to reconnect elsewhere).
    on_drain: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Clean-up after the drain and the background tasks' end, run in reverse order.
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    failure: BaseException | None = None  # what the first failed background task raised
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # a signal or a failure asks to stop
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _started: bool = False
    _stopped: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> GrpcApp:
        """Starts the server, runs the start-up work, then turns health SERVING."""
        try:
            await self.start()
            for work in self.before_serving:
                await work()
            await self.set_serving(True)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Starts answering RPCs, health NOT_SERVING (the health servicer starts out SERVING)."""
        if self._started:
            return
        self._started = True
        await self.set_serving(False)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        """Once a background task has failed, health stays NOT_SERVING."""
        ok = serving and self.failure is None
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Runs `coroutine` as a task of this server until it stops; see the module doc for a failure."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error("background task failed; stopping", extra={"task": task.get_name()}, exc_info=task.exception())
        if self.failure is None:
            self.failure = task.exception()
            if not self._stopped:  # a drain has already turned health NOT_SERVING
                self.spawn(self.set_serving(False), "health-not-serving")
        self.stopping.set()

    async def stop(self, grace: float | None = None) -> None:
        """Drains: NOT_SERVING first so balancers stop sending, then the `on_drain` work, then
        in-flight RPCs finish (for `grace` seconds, the app's own by default), then background
        tasks end."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        await self.health.enter_graceful_shutdown()
        for work in self.on_drain:
            try:
                await work()
            except Exception:  # the server must stop all the same
                log.exception("drain work failed")
        await self.server.stop(self.grace if grace is None else grace)
        ending = list(self._tasks)
        for task in ending:
            task.remove_done_callback(self._ended)  # ended on purpose: cancel_and_wait reports errors
        await cancel_and_wait(ending)
        for callback in reversed(self.on_stop):
            await callback()


class MethodAwarePool:
    """The default descriptor pool, which also finds the file of a method's full name
    (`grpcurl describe pkg.Service.Method`): grpcio-reflection asks the pool for it as a
    symbol and the pool knows services, not methods (grpc/grpc#34743)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            service = self._pool.FindServiceByName(service_name)  # KeyError when not a service either
            if method not in service.methods_by_name:
                raise
            return service.file


def build_app(
    service_names: Sequence[str],
    register: Callable[[grpc.aio.Server], None],
    *,
    host: str,
    port: int,
    authenticator: Authenticator | None,
    grace: float = 0.0,
    slow_rpc_seconds: float = Settings.access_log_slow_seconds,
    tls: grpc.ServerCredentials | None = None,
    rate_limiter: RateLimiter | None = None,
) -> GrpcApp:
    """Creates the server with the shared interceptors, health (NOT_SERVING) and reflection.
    A unary call that succeeds in `slow_rpc_seconds` or more is logged at INFO, faster ones at DEBUG.
    `tls` (services/common/tls.py server_credentials): serve TLS rather than plaintext."""
    access_log = AccessLog(slow_rpc_seconds)
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(authenticator, access_log, rate_limiter)],
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
        pool=cast(descriptor_pool.DescriptorPool, MethodAwarePool()),
    )
    bound = server.add_secure_port(f"{host}:{port}", tls) if tls else server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind gRPC port {host}:{port}")
    return GrpcApp(
        server=server,
        health=health_servicer,
        service_names=tuple(service_names),
        port=bound,
        grace=grace,
        access_log=access_log,
    )


class Service(Protocol):
    """What a service's `create_server` returns: its app, and whatever tests look at."""

    @property
    def app(self) -> GrpcApp: ...


async def run_until_stopped(app: GrpcApp) -> None:
    """Serves until SIGTERM or SIGINT, or until a background task fails."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stopping.set)
    log.info("serving", extra={"port": app.port, "services": list(app.service_names)})
    await app.stopping.wait()
    log.info("draining", extra={"grace_seconds": app.grace})


async def serve_app(settings: Settings, app: GrpcApp) -> int:
    """Runs a built app as a process does: metrics, start, start-up work, serve, drain.
    Returns the exit code: non-zero when a background task failed."""
    metrics_port = start_metrics_server(settings.metrics_port, settings.grpc_host)
    app.access_log.slow_seconds = settings.access_log_slow_seconds
    await app.start()
    log.info("started", extra={"port": app.port, "metrics_port": metrics_port})
    async with app:
        await run_until_stopped(app)
    log.info("stopped")
    return EXIT_TASK_FAILED if app.failure is not None else 0


async def _serve_with_database(service: str, default_port: int, create: Callable[[Settings, Pool], Service]) -> int:
    settings = load_settings(grpc_port=default_port)
    configure_logging(service, settings.log_level)
    configure_client_tls(settings.tls_ca_file)
    conninfo = resolve_database_url(settings)
    await migrate(conninfo)
    pool = await open_pool(
        conninfo,
        max_size=settings.db_pool_max_size,
        name=service,
        acquire_timeout=settings.db_acquire_timeout_seconds,
        connect_timeout=settings.db_connect_timeout_seconds,
    )
    app = create(settings, pool).app
    app.on_stop.insert(0, pool.close)  # closed last, after everything that uses it
    return await serve_app(settings, app)


async def _serve_without_database(service: str, default_port: int, create: Callable[[Settings], Service]) -> int:
    settings = load_settings(grpc_port=default_port)
    configure_logging(service, settings.log_level)
    configure_client_tls(settings.tls_ca_file)
    return await serve_app(settings, create(settings).app)


def run_service(service: str, default_port: int, create: Callable[[Settings, Pool], Service]) -> None:
    """The `serve()` of a service with a database: config, logs, migrations, pool, then `serve_app`."""
    sys.exit(uvloop.run(_serve_with_database(service, default_port, create)))


def run_service_without_database(service: str, default_port: int, create: Callable[[Settings], Service]) -> None:
    """The `serve()` of a service that holds no database connection (a feed shard)."""
    sys.exit(uvloop.run(_serve_without_database(service, default_port, create)))
