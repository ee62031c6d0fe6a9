"""`make run`: the whole system on one machine with embedded defaults.

Starts (or reuses) the embedded Postgres, migrates, then runs every service as its own
process on fixed local ports, waits until each reports SERVING, and prints what to try.
Ctrl-C (or SIGTERM) drains every service and stops Postgres.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import load_settings
from services.common.db import resolve_database_url
from services.common.jsonlog import configure_logging
from services.common.migrate import migrate

log = logging.getLogger("stack")

READY_TIMEOUT_SECONDS = 180.0


@dataclass(frozen=True)
class Process:
    name: str
    argv: tuple[str, ...]
    grpc_port: int
    metrics_port: int
    env: tuple[tuple[str, str], ...] = ()


def plan(shards: int, offset: int = 0) -> list[Process]:
    py = sys.executable
    shard_ports = [50060 + offset + n for n in range(shards)]
    processes = [
        Process("registry", (py, "-m", "services.registry"), 50051 + offset, 9464 + offset),
        Process("subscription", (py, "-m", "services.subscription"), 50052 + offset, 9465 + offset),
        Process(
            "gateway",
            (py, "-m", "services.feed", "gateway"),
            50053 + offset,
            9466 + offset,
            (("GATEWAY_SHARD_ADDRS", ",".join(f"127.0.0.1:{port}" for port in shard_ports)),),
        ),
        Process("scheduler", (py, "-m", "services.scheduler"), 50055 + offset, 9467 + offset),
    ]
    processes += [
        Process(f"shard-{n}", (py, "-m", "services.feed", "shard"), port, 9470 + offset + n, (("SHARD_ID", str(n)),))
        for n, port in enumerate(shard_ports)
    ]
    return processes


async def wait_serving(process: Process, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{process.grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
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


def banner(processes: list[Process]) -> str:
    registry = next(p for p in processes if p.name == "registry").grpc_port
    lines = ["", "dataserver is up:"]
    lines += [f"  {p.name:<13} grpc 127.0.0.1:{p.grpc_port:<6} metrics http://127.0.0.1:{p.metrics_port}/metrics" for p in processes]
    lines += [
        "",
        "Try (grpcurl needs no proto files; the server has reflection):",
        f"  grpcurl -plaintext -d '{{\"query\": \"RELIANCE\", \"page_size\": 5}}' 127.0.0.1:{registry} dataserver.registry.v1.RegistryService/SearchInstruments",
        f"  grpcurl -plaintext -d '{{\"underlying_symbol\": \"NIFTY\", \"use_last_price\": true, \"strikes_each_side\": 5}}' 127.0.0.1:{registry} dataserver.registry.v1.RegistryService/GetOptionChain",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


async def run() -> int:
    settings = load_settings()
    configure_logging("stack", settings.log_level)
    conninfo = resolve_database_url(settings)
    await migrate(conninfo)
    processes = plan(settings.feed_connections, settings.stack_port_offset)
    children: dict[str, subprocess.Popen[bytes]] = {}
    for process in processes:
        env = {
            **os.environ,
            "DATABASE_URL": conninfo,
            "GRPC_PORT": str(process.grpc_port),
            "METRICS_PORT": str(process.metrics_port),
            **dict(process.env),
        }
        children[process.name] = subprocess.Popen(process.argv, env=env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        deadline = loop.time() + READY_TIMEOUT_SECONDS
        ready = asyncio.ensure_future(asyncio.gather(*(wait_serving(p, deadline) for p in processes)))
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({ready, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            ready.cancel()
            return 0
        if ready.exception() is not None:
            log.error("the stack did not come up", extra={"error": str(ready.exception())})
            return 1
        print(banner(processes), flush=True)
        while not stop.is_set():
            dead = [name for name, child in children.items() if child.poll() is not None]
            if dead:
                log.error("a service exited; stopping the stack", extra={"services": dead})
                return 1
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
        return 0
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()


def main() -> None:
    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
