"""The stack the shard and end-to-end parts of bench.feed run on: an embedded Postgres, the
registry child with the full master (bench.registry's), the subscription service with the
default budget (5 connections x 5,000) filled with watchlist adds (stock option chains, as
bench.subscription does) until no unit fits, and the shard processes it places them on."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.children import Child, bench_database, service_started
from bench.feed.procs import PROFILE, Children, service_env
from bench.report import Report
from services.registry.sources import MasterFile

CAPACITY_CONNECTIONS, PER_CONNECTION = 5, 5_000
FILL_CLIENTS = 8
UNIT_SIZE = 51
RPC_SECONDS = 10.0


@dataclass
class Stack:
    conninfo: str
    registry_address: str
    subscription: Child
    keys: list[tuple[int, int]]  # (proto segment, security id) of every subscribed instrument
    shard_loads: dict[int, int]


async def _fill(
    report: Report, registry_address: str, subscription_address: str
) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """Adds distinct stock option units (stock + 50 options) until one more would not fit."""
    import grpc
    from dataserver.subscription.v1 import subscription_pb2 as pb
    from dataserver.subscription.v1 import subscription_pb2_grpc

    from bench.subscription_calls import add, watchlist_units

    capacity = CAPACITY_CONNECTIONS * PER_CONNECTION
    pairs = await watchlist_units(registry_address)
    queue = list(reversed(pairs))
    held: set[tuple[int, int]] = set()
    in_flight = [0]
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + 180

    async with grpc.aio.insecure_channel(subscription_address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = subscription_pb2_grpc.SubscriptionServiceStub(channel)

        async def client(n: int) -> None:
            while queue and time.monotonic() < deadline:
                if len(held) + (in_flight[0] + 1) * UNIT_SIZE > capacity:
                    return
                pair = queue.pop()
                in_flight[0] += 1
                try:
                    result = await add(stub, pb, pair, f"bench-feed-{n}")
                except Exception as error:
                    errors[type(error).__name__] += 1
                    continue
                finally:
                    in_flight[0] -= 1
                held.update(result.instruments)

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(FILL_CLIENTS)))
        status = await stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), timeout=RPC_SECONDS)
        loads = {s.shard_id: s.instrument_count for s in status.shards}
        report.note(
            f"filled the pool with watchlist adds in {time.perf_counter() - started:.1f} s: {status.subscribed_count} "
            f"of {status.capacity} subscribed, per shard {loads}" + (f", add errors {dict(errors)}" if errors else "")
        )
    return sorted(held), loads


def start_shard(children: Children, stack: Stack, shard_id: int, sim_port: int) -> Child:
    """A real shard process (`python -m services.feed shard`) reading the simulator at sim_port."""
    env = service_env(
        SHARD_ID=str(shard_id),
        FEED_URL=f"ws://127.0.0.1:{sim_port}",
        SUBSCRIPTION_ADDR=stack.subscription.address,
        REGISTRY_ADDR=stack.registry_address,
        FEED_CONNECTIONS="1",
        FEED_MARKET_HOURS_ONLY="false",
        FEED_MAX_BACKOFF_SECONDS="0.5",
        FEED_ACCOUNTS="5",  # one simulated account per shard: distinct client ids, so none kicks another
        MASTER_SOURCE="generated",
    )
    prefix = children.folder / f"shard-{shard_id}" if PROFILE and shard_id == 0 else None
    argv = ["-m", "bench.feed.profiled", str(prefix), "shard"] if prefix else ["-m", "services.feed", "shard"]
    return children.spawn(f"shard-{shard_id}", argv, env, service_started, prefix)


async def shard_status(address: str) -> Any:
    import grpc
    from dataserver.feed.v1 import shard_pb2, shard_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        return (
            await shard_pb2_grpc.ShardServiceStub(channel).GetStatus(shard_pb2.GetStatusRequest(), timeout=RPC_SECONDS)
        ).status


async def wait_subscribed(addresses: Sequence[str], expected: Sequence[int], timeout: float = 30.0) -> list[Any]:
    """Until every shard is connected with all its assigned instruments subscribed."""
    from dataserver.feed.v1 import feed_pb2

    deadline = time.monotonic() + timeout
    while True:
        statuses = [await shard_status(a) for a in addresses]
        if all(
            s.connection_state == feed_pb2.CONNECTION_STATE_CONNECTED
            and s.instruments_assigned == n
            and s.instruments_subscribed == n
            for s, n in zip(statuses, expected, strict=True)
        ):
            return statuses
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"shards not subscribed after {timeout:.0f} s: "
                + "; ".join(
                    f"#{s.shard_id} state {s.connection_state} {s.instruments_subscribed}/{s.instruments_assigned}"
                    for s in statuses
                )
            )
        await asyncio.sleep(0.2)


@contextmanager
def feed_stack(report: Report, children: Children, folder: Path, master: MasterFile) -> Iterator[Stack]:
    """Postgres, the registry and the filled subscription service, for the parts 2 and 3; every
    service child is stopped before its database goes."""
    from bench.registry_child import registry_child

    began = time.perf_counter()
    with bench_database(folder, "bench_feed") as conninfo, registry_child(folder, conninfo, master) as registry:
        ready = registry.ready
        env = service_env(
            DATABASE_URL=conninfo,
            DATASERVER_DATA_DIR=str(folder),
            REGISTRY_ADDR=ready["address"],
            GATEWAY_ADDR="127.0.0.1:1",
            FEED_CONNECTIONS=str(CAPACITY_CONNECTIONS),
            FEED_INSTRUMENTS_PER_CONNECTION=str(PER_CONNECTION),
            USER_MAX_ITEMS="100000",
            USER_MAX_INSTRUMENTS=str(CAPACITY_CONNECTIONS * PER_CONNECTION),
        )
        service = children.spawn("subscription", ["-m", "services.subscription"], env, service_started)
        try:
            keys, loads = asyncio.run(_fill(report, ready["address"], service.address))
            report.note(
                f"stack ready in {time.perf_counter() - began:.1f} s (Postgres, registry with "
                f"{ready['rows']} rows, subscription pid {service.pid}, the fill)"
            )
            yield Stack(conninfo, ready["address"], service, keys, loads)
        finally:
            for child in reversed(children.all):  # every service, before its database goes
                child.stop()
                errors = child.errors()
                if errors:
                    report.note(f"{child.name}: {len(errors)} ERROR/Traceback lines; first: {errors[0][:1000]}")
