"""The feed on real parts: the simulator over loopback WebSockets, a real subscription
service and registry, and shard runtimes with their gRPC servers."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.clock import Clock
from services.common.config import Settings
from services.feed import gateway_server, shard_server
from simulator.settings import SimulatorSettings
from simulator.simulator import Simulator
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription


async def eventually(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Polls until `condition()` (awaited when it is a coroutine) is truthy; fails with
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def start_logged_service(
    module: str, env: dict[str, str], log_path: Path, *args: str
) -> tuple[subprocess.Popen[bytes], int]:
    """Starts `python -m module args...` logging to a file (a pipe nobody drains would block it)
    and reads its port from the "started" line."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", module, *args], env=env, stderr=log_file)

    def started_port() -> int | None:
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited: {log_path.read_text()[-2000:]}")
        for line in log_path.read_text().splitlines():
            record = json.loads(line)
            if record.get("msg") == "started":
                return int(record["port"])
        return None

    return process, await eventually(started_port, timeout=60, what=f"{module} to start")


@dataclass
class FeedUnderTest:
    subscription: SubscriptionUnderTest
    simulator: Simulator
    shards: list[shard_server.Shard]
    gateway: gateway_server.Gateway
    servers: AsyncExitStack  # stops every server entered into it when the feed is torn down

    def subscriptions_on_broker(self) -> list[int]:
        return [len(c.subscriptions) for c in self.simulator.connections()]


def gateway_settings(service: SubscriptionUnderTest, shards: list[shard_server.Shard]) -> Settings:
    """A gateway following every shard (another one is another replica)."""
    return dataclasses.replace(
        service.settings,
        grpc_port=0,
        subscription_addr=service.address,
        gateway_shard_addrs=tuple(s.app.address for s in shards),
        gateway_drain_seconds=1.0,  # a test gateway stopping with streams open waits this out
    )


# Shard settings of running_feed; its keyword arguments override them.
SHARD_TEST_SETTINGS: dict[str, Any] = {
    "feed_market_hours_only": False,
    "feed_watchdog_seconds": 1.5,
    "feed_max_backoff_seconds": 0.2,
    "feed_kicked_backoff_seconds": 1.0,
    "feed_coalesce_seconds": 0.02,
}


@asynccontextmanager
async def running_feed(
    conninfo: str,
    masters_dir: Path,
    *,
    shards: int = 1,
    simulator: dict[str, Any] | None = None,
    clock: Clock | None = None,
    subscription: dict[str, Any] | None = None,
    simulator_clock: Callable[[], float] | None = None,
    **settings: Any,
) -> AsyncIterator[FeedUnderTest]:
    """`clock`, when given, is the gateway's market clock (the shards keep streaming at any hour);
    `subscription`: running_subscription's arguments (its budget, its prices) over the defaults;
    `simulator_clock`: the simulator's clock (UTC epoch seconds; its prices' time to expiry);
    `settings`: the shards' settings over SHARD_TEST_SETTINGS."""
    async with running_subscription(
        conninfo,
        masters_dir,
        **{"feed_connections": shards, "feed_instruments_per_connection": 5000, **(subscription or {})},
    ) as service:
        sim = Simulator(
            SimulatorSettings(
                port=0,
                control_port=0,
                master_cache_dir=masters_dir,
                master_scale="small",
                seed=1,
                ticks_per_second=20.0,
                **(simulator or {}),
            ),
            clock=simulator_clock or time.time,
        )
        ws_port, _ = await sim.start()
        try:
            async with AsyncExitStack() as servers:
                started = []
                for shard_id in range(shards):
                    shard = shard_server.create_server(
                        dataclasses.replace(
                            service.settings,
                            shard_id=shard_id,
                            feed_connections=shards,
                            feed_url=f"ws://127.0.0.1:{ws_port}",
                            subscription_addr=service.address,
                            grpc_port=0,
                            **{**SHARD_TEST_SETTINGS, **settings},
                        )
                    )
                    await servers.enter_async_context(shard.app)
                    started.append(shard)
                gateway = gateway_server.create_server(gateway_settings(service, started), service.pool, clock)
                await servers.enter_async_context(gateway.app)
                yield FeedUnderTest(service, sim, started, gateway, servers)
        finally:
            await sim.stop()
