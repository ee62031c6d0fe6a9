"""`make run`: the whole system on one machine with embedded defaults.

Starts (or reuses) the embedded Postgres, migrates, then runs every service as its own
process on fixed local ports, waits until each reports SERVING, and prints what to try.
A process that exits, or a Postgres that stops answering, is restarted with back-off
(services/stack/supervisor.py). Ctrl-C (or SIGTERM) stops the services, then the
simulator, then Postgres.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

import grpc
from dataserver.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc
from grpc_health.v1 import health_pb2

from services.common.clients import health_stub
from services.common.clock import clock_from_settings, trading_date_of
from services.common.config import Settings, load_settings
from services.common.jsonlog import configure_logging
from services.common.migrate import migrate
from services.stack.keys import DEV_USER, DevelopmentKeys, development_keys
from services.stack.postgres import EmbeddedPostgres
from services.stack.supervisor import ServiceProcess, Supervised

log = logging.getLogger("stack")

READY_TIMEOUT_SECONDS = 180.0
# The gateway's port at offset 0, which `make terminal` (dataserver-terminal's default) dials.
DEFAULT_GATEWAY_PORT = 50053


@dataclass(frozen=True)
class Process:
    name: str
    argv: tuple[str, ...]
    grpc_port: int
    metrics_port: int
    env: tuple[tuple[str, str], ...] = ()
    # Processes without gRPC health (the simulator) answer GET /health on this port.
    http_health_port: int = 0

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port it listens on; the simulator's feed listens just below its health port."""
        feed = self.http_health_port - 1 if self.http_health_port else 0
        return tuple(p for p in (self.grpc_port, self.metrics_port, self.http_health_port, feed) if p)


def plan(settings: Settings) -> list[Process]:
    """Every process of the stack, with its ports: one shard per connection of every account
    (SHARD_ID 0..feed_connections-1), and, without real accounts, a simulator that knows exactly
    the simulated accounts' client ids (Dhan's limits then hold per client id, as at Dhan)."""
    py = sys.executable
    offset = settings.stack_port_offset
    shard_ports = [50060 + offset + n for n in range(settings.feed_connections)]
    processes = []
    if not settings.dhan_credentials:
        simulator_port = 8765 + offset
        processes.append(
            Process(
                "simulator",
                (
                    py,
                    "-m",
                    "simulator",
                    "--port",
                    str(simulator_port),
                    "--control-port",
                    str(simulator_port + 1),
                    "--master-cache-dir",
                    str(settings.data_dir / "masters"),
                    "--master-scale",
                    settings.master_scale,
                    "--master-seed",
                    str(settings.master_seed),
                    # The registry's master date (MARKET_CLOCK), so both generate the same master.
                    "--trading-date",
                    trading_date_of(clock_from_settings(settings)).isoformat(),
                    "--client-ids",
                    ",".join(account.client_id for account in settings.accounts),
                ),
                0,
                0,
                http_health_port=simulator_port + 1,
            )
        )
    feed = () if settings.dhan_credentials else (("FEED_URL", f"ws://127.0.0.1:{8765 + offset}"),)
    processes += [
        Process("registry", (py, "-m", "services.registry"), 50051 + offset, 9464 + offset),
        Process("subscription", (py, "-m", "services.subscription"), 50052 + offset, 9465 + offset),
        Process(
            "gateway",
            (py, "-m", "services.feed", "gateway"),
            DEFAULT_GATEWAY_PORT + offset,
            9466 + offset,
            (("GATEWAY_SHARD_ADDRS", ",".join(f"127.0.0.1:{port}" for port in shard_ports)),),
        ),
        # The start-up preload retries soon: the registry may still be loading the master.
        Process(
            "scheduler",
            (py, "-m", "services.scheduler"),
            50055 + offset,
            9467 + offset,
            (("SCHEDULER_RETRY_SECONDS", "2"),),
        ),
    ]
    processes += [
        Process(
            f"shard-{n}", (py, "-m", "services.feed", "shard"), port, 9470 + offset + n, (("SHARD_ID", str(n)), *feed)
        )
        for n, port in enumerate(shard_ports)
    ]
    addresses = {
        "REGISTRY_ADDR": f"127.0.0.1:{50051 + offset}",
        "SUBSCRIPTION_ADDR": f"127.0.0.1:{50052 + offset}",
        "GATEWAY_ADDR": f"127.0.0.1:{DEFAULT_GATEWAY_PORT + offset}",
    }
    processes = [dataclasses.replace(p, env=(*addresses.items(), *p.env)) for p in processes]
    _check_ports(processes)
    return processes


def _check_ports(processes: list[Process]) -> None:
    """Refuses a plan in which two processes would listen on one port (e.g. shard ports
    running into another service's as accounts add shards)."""
    owners: dict[int, str] = {}
    for p in processes:
        for port in p.ports:
            if owners.setdefault(port, p.name) != p.name:
                raise ValueError(f"port {port} is planned for both {owners[port]} and {p.name}")


def free_offset(preferred: int, step: int = 97, tries: int = 20, also: tuple[int, ...] = ()) -> int:
    """`preferred`, or the next STACK_PORT_OFFSET whose planned ports (and the ports `also`,
    moved by the offset too) are all free now: another stack on the machine (a second
    checkout's tests, a bench) may hold the same offset."""
    for attempt in range(tries):
        offset = preferred + attempt * step
        ports = {port for p in plan(load_settings({"STACK_PORT_OFFSET": str(offset)})) for port in p.ports}
        if all(_port_free(port) for port in ports | {base + offset for base in also}):
            return offset
    raise RuntimeError(f"no free stack port offset from {preferred} in {tries} tries")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _http_healthy(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.write(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    status = await reader.readline()
    writer.close()
    return b" 200 " in status


async def wait_serving(process: Process, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    if process.http_health_port:
        while not await _http_healthy(process.http_health_port):
            if loop.time() > deadline:
                raise TimeoutError(f"{process.name} did not become healthy on port {process.http_health_port}")
            await asyncio.sleep(0.5)
        return
    async with grpc.aio.insecure_channel(f"127.0.0.1:{process.grpc_port}") as channel:
        stub = health_stub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{process.name} did not become SERVING on port {process.grpc_port}")
            await asyncio.sleep(0.5)


async def seed(subscription_port: int, scheduler_port: int, user_token: str) -> None:
    """Puts NIFTY's chain on the dev user's watchlist, then waits (bounded) for the
    scheduler's start-up preload of Tier B, so ticks flow as soon as the banner shows."""
    metadata = (("authorization", f"Bearer {user_token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{subscription_port}") as channel:
        stub = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        item = await stub.AddWatchlistItem(
            subscription_pb2.AddWatchlistItemRequest(symbol="NIFTY", strikes_each_side=5), timeout=60, metadata=metadata
        )
    preload = await _preload_run(scheduler_port, metadata)
    log.info(
        "seeded",
        extra={
            "watchlist_instruments": item.watchlist_item.instrument_count,
            "tier_b_preload": dict(preload.counts) if preload else "not yet (see the scheduler's log)",
        },
    )


async def _preload_run(scheduler_port: int, metadata: tuple[tuple[str, str], ...]) -> scheduler_pb2.JobRun | None:
    """The scheduler's first successful preload_tier_b run, waited for up to a minute."""
    request = scheduler_pb2.ListJobRunsRequest(
        job_name="preload_tier_b", outcome=scheduler_pb2.JOB_RUN_OUTCOME_SUCCEEDED, page_size=1
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{scheduler_port}") as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            runs = (await stub.ListJobRuns(request, timeout=10, metadata=metadata)).job_runs
            if runs:
                return runs[0]
            await asyncio.sleep(0.5)
    return None


def feed_summary(settings: Settings) -> str:
    """What the feed runs as, e.g. "2 accounts (sim-1, sim-2) x 5 connections = 10 shards, capacity 50,000"."""
    accounts = settings.accounts
    names = ", ".join(a.account_id for a in accounts)
    capacity = settings.feed_connections * settings.feed_instruments_per_connection
    return (
        f"{len(accounts)} account{'s' if len(accounts) > 1 else ''} ({names}) x "
        f"{settings.feed_connections_per_account} connections = {settings.feed_connections} shards, "
        f"capacity {capacity:,} instruments"
    )


def banner(processes: list[Process], feed: str, keys: DevelopmentKeys) -> str:
    registry = next(p for p in processes if p.name == "registry").grpc_port
    lines = ["", f"dataserver is up; feed: {feed}"]
    for p in processes:
        if p.http_health_port:
            lines.append(
                f"  {p.name:<13} feed ws://127.0.0.1:{p.http_health_port - 1}  control http://127.0.0.1:{p.http_health_port}/connections"
            )
        else:
            lines.append(
                f"  {p.name:<13} grpc 127.0.0.1:{p.grpc_port:<6} metrics http://127.0.0.1:{p.metrics_port}/metrics"
            )
    gateway = next(p for p in processes if p.name == "gateway").grpc_port
    user = keys.user
    lines += [
        "",
        "Development API keys (new at each start; the previous ones are revoked):",
        f"  admin token {keys.admin}",
        f"  user token  {keys.user}  (user {DEV_USER!r}; AUTH_MODE=api_key needs one of them)",
        "",
        "Try (grpcurl needs no proto files; the server has reflection):",
        _grpcurl(
            registry, "registry.v1.RegistryService/SearchInstruments", '{"query": "RELIANCE", "page_size": 5}', user
        ),
        _grpcurl(
            registry,
            "registry.v1.RegistryService/GetOptionChain",
            '{"underlying_symbol": "NIFTY", "use_last_price": true, "strikes_each_side": 5}',
            user,
        ),
        "Live NIFTY option ticks (the dev user's watchlist holds NIFTY's chain; Tier B is preloaded):",
        _grpcurl(gateway, "feed.v1.GatewayService/StreamTicks", '{"my_watchlist": true}', user),
        "NIFTY's live option chain with IV and greeks, computed by the gateway:",
        _grpcurl(
            gateway,
            "feed.v1.GatewayService/StreamOptionChain",
            '{"underlying_symbol": "NIFTY", "strikes_each_side": 5}',
            user,
        ),
        *_terminal(processes, user),
        "",
        "A crashed process is restarted (with back-off); Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def _terminal(processes: list[Process], token: str) -> list[str]:
    """How to start the terminal app on this stack: `make terminal` on the default ports."""
    port = {p.name: p.grpc_port for p in processes}
    command = (
        ".venv/bin/dataserver-terminal"
        f" --gateway 127.0.0.1:{port['gateway']} --subscription 127.0.0.1:{port['subscription']}"
        f" --registry 127.0.0.1:{port['registry']} --token {token}"
    )
    if port["gateway"] == DEFAULT_GATEWAY_PORT:
        command = f"make terminal TOKEN={token}   (or {command})"
    return [
        "The terminal app, in another shell (watchlist; c: an option chain, g: its greeks):",
        f"  {command}",
    ]


def _grpcurl(port: int, method: str, body: str, token: str) -> str:
    return f"  grpcurl -plaintext -H 'authorization: Bearer {token}' -d '{body}' 127.0.0.1:{port} dataserver.{method}"


async def run() -> int:
    settings = load_settings()
    configure_logging("stack", settings.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    postgres: Supervised | None = None
    children: list[Supervised] = []
    try:
        conninfo = settings.database_url
        if not conninfo:
            embedded = EmbeddedPostgres(settings.data_dir)
            postgres = Supervised(embedded)
            await postgres.start()
            conninfo = embedded.conninfo
        await migrate(conninfo)
        keys = await development_keys(conninfo)
        processes = plan(settings)
        children = [Supervised(ServiceProcess(p.name, p.argv, _environment(p, conninfo, keys))) for p in processes]
        for child in children:
            await child.start()
        log.info("starting", extra={"feed": feed_summary(settings), "processes": len(processes)})
        if stop.is_set() or not await _first_start(processes, feed_summary(settings), keys, stop):
            return 0 if stop.is_set() else 1
        await stop.wait()
        return 0
    finally:
        await _stop_in_order(children, postgres)


def _environment(process: Process, conninfo: str, keys: DevelopmentKeys) -> dict[str, str]:
    return {
        # The processes call each other with the service key, unless the operator gave one.
        "SERVICE_TOKEN": keys.service,
        **os.environ,
        "DATABASE_URL": conninfo,
        "GRPC_PORT": str(process.grpc_port),
        "METRICS_PORT": str(process.metrics_port),
        **dict(process.env),
    }


async def _first_start(processes: list[Process], feed: str, keys: DevelopmentKeys, stop: asyncio.Event) -> bool:
    """Waits for every process to serve, seeds, prints the banner; false when stopped or it failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_SECONDS
    ready: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(wait_serving(p, deadline) for p in processes)))
    waiter: asyncio.Future[Any] = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({ready, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        ready.cancel()
        return False
    waiter.cancel()
    if ready.exception() is not None:
        log.error("the stack did not come up", extra={"error": str(ready.exception())})
        return False
    ports = {p.name: p.grpc_port for p in processes}
    await seed(ports["subscription"], ports["scheduler"], keys.user)
    print(banner(processes, feed, keys), flush=True)
    return True


async def _stop_in_order(children: list[Supervised], postgres: Supervised | None) -> None:
    """The services first (together), then the simulator they read from, then Postgres."""
    simulator = [c for c in children if c.child.name == "simulator"]
    services = [c for c in children if c not in simulator]
    for group in (services, simulator, [postgres] if postgres else []):
        outcomes = await asyncio.gather(*(c.stop() for c in group), return_exceptions=True)
        for child, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("could not stop", extra={"child": child.child.name, "error": repr(outcome)})
    log.info("stopped")


def main() -> None:
    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
