"""Two real subscription processes on one Postgres, 64 concurrent clients adding and
removing: the budget, the per-shard limits, uniqueness and reference counts always hold."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from dataserver.subscription.v1 import subscription_pb2 as pb
from dataserver.subscription.v1 import subscription_pb2_grpc

from services.common.auth import create_api_key
from services.common.db import Pool, open_pool
from tests.feed_fixtures import start_logged_service
from tests.registry_fixtures import bearer, running_registry

CONNECTIONS, PER_CONNECTION = 3, 100
CLIENTS, OPERATIONS = int(os.environ.get("T_CLIENTS", 64)), 6
SYMBOLS = ("RELIANCE", "SBIN", "INFY", "TCS", "HDFCBANK", "NIFTY", "BANKNIFTY", "CRUDEOIL")
ALLOWED = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}


def process_env(database_url: str, service_token: str, registry_address: str) -> dict[str, str]:
    """The environment of a subscription service run as its own process (`python -m`)."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "AUTH_MODE": "api_key",
        "SERVICE_TOKEN": service_token,
        "REGISTRY_ADDR": registry_address,
        "GATEWAY_ADDR": "127.0.0.1:1",
        "GRPC_PORT": "0",
        "LOG_LEVEL": "INFO",  # the "started" line carries the port
        "FEED_CONNECTIONS": str(CONNECTIONS),
        "FEED_INSTRUMENTS_PER_CONNECTION": str(PER_CONNECTION),
    }


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(database_url: str, masters_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[list[str], str, Pool]]:
    async with running_registry(database_url, masters_dir) as registry:
        pool = await open_pool(database_url, max_size=4)
        token = await create_api_key(pool, "service", "service")
        env = process_env(database_url, token, registry.address)
        started = [
            await start_logged_service("services.subscription", env, tmp_path / f"replica-{n}.log") for n in range(2)
        ]
        try:
            yield [f"127.0.0.1:{port}" for _, port in started], token, pool
        finally:
            for process, _ in started:
                process.terminate()
            for process, _ in started:
                process.wait(timeout=30)
            await pool.close()


async def check_invariants(pool: Pool) -> None:
    async with pool.connection() as conn:
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            total = await (await conn.execute("SELECT count(*) AS n FROM subscriptions")).fetchone()
            shards = await (
                await conn.execute(
                    "SELECT shard_id, count(*) AS n FROM (SELECT shard_id FROM subscriptions UNION ALL "
                    "SELECT moving_to_shard FROM subscriptions WHERE moving_to_shard IS NOT NULL) s GROUP BY 1"
                )
            ).fetchall()
            refs = await (
                await conn.execute(
                    "SELECT count(*) AS n FROM subscriptions s WHERE s.ref_count <> "
                    "(SELECT count(*) FROM subscription_owners o "
                    "WHERE o.exchange_segment = s.exchange_segment AND o.security_id = s.security_id)"
                )
            ).fetchone()
            drift = await (
                await conn.execute(
                    "SELECT count(*) AS n FROM ("
                    "SELECT shard_id, tier, false AS incoming, count(*) AS n FROM subscriptions GROUP BY 1, 2 "
                    "UNION ALL SELECT moving_to_shard, tier, true, count(*) FROM subscriptions "
                    "WHERE moving_to_shard IS NOT NULL GROUP BY 1, 2) actual "
                    "FULL JOIN (SELECT * FROM subscription_counts WHERE n <> 0) kept USING (shard_id, tier, incoming) "
                    "WHERE actual.n IS DISTINCT FROM kept.n"
                )
            ).fetchone()
            evicted_holding = await (
                await conn.execute(
                    "SELECT count(*) AS n FROM watchlist_items w JOIN subscription_owners o ON o.owner_kind = 'unit' "
                    "AND o.owner_id = w.item_id::text WHERE w.state = 'EVICTED'"
                )
            ).fetchone()
    assert total["n"] <= CONNECTIONS * PER_CONNECTION, total  # type: ignore[index]
    assert all(row["n"] <= PER_CONNECTION for row in shards), shards
    assert refs["n"] == 0 and evicted_holding["n"] == 0 and drift["n"] == 0  # type: ignore[index]


async def test_invariants_hold_across_two_replicas_under_concurrent_load(replicas) -> None:
    addresses, admin_token, pool = replicas
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [subscription_pb2_grpc.SubscriptionServiceStub(c) for c in channels]
    users = [bearer(await create_api_key(pool, f"user{n}", "user")) for n in range(CLIENTS)]
    outcomes: dict[str, int] = {}
    stop_checking = asyncio.Event()
    under_load = asyncio.Event()  # every client has had an add answered

    async def client(n: int) -> None:
        rng = random.Random(n)
        mine: list[str] = []
        for op in range(OPERATIONS):
            stub = stubs[(n + op) % 2]
            try:
                if mine and rng.random() < 0.3:
                    await stub.RemoveWatchlistItem(
                        pb.RemoveWatchlistItemRequest(item_id=mine.pop(rng.randrange(len(mine)))), metadata=users[n]
                    )
                    outcomes["remove"] = outcomes.get("remove", 0) + 1
                else:
                    reply = await stub.AddWatchlistItem(
                        pb.AddWatchlistItemRequest(
                            symbol=rng.choice(SYMBOLS), strikes_each_side=rng.choice((2, 5, 10))
                        ),
                        metadata=users[n],
                    )
                    if reply.watchlist_item.item_id not in mine:  # a re-added evicted item keeps its id
                        mine.append(reply.watchlist_item.item_id)
                    outcomes["add"] = outcomes.get("add", 0) + 1
                    if outcomes["add"] >= CLIENTS:
                        under_load.set()
                    outcomes["evictions"] = outcomes.get("evictions", 0) + len(reply.evictions)
            except grpc.aio.AioRpcError as error:
                assert error.code() in ALLOWED, (error.code(), error.details())
                outcomes[error.code().name] = outcomes.get(error.code().name, 0) + 1
        under_load.set()  # (whatever the adds did, the plan must not wait forever)

    async def checker() -> None:
        while not stop_checking.is_set():
            await check_invariants(pool)
            await asyncio.sleep(0.05)

    async def tier_b() -> None:
        await under_load.wait()  # the plan lands while the clients are busy
        chain = pb.TierBChain(
            underlying_symbol="NIFTY", nearest_expiries=1, strikes_each_side=5, include_underlying=True
        )
        await stubs[1].SetTierBPlan(pb.SetTierBPlanRequest(chains=[chain]), metadata=bearer(admin_token))

    checking = asyncio.create_task(checker())
    await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(CLIENTS)), tier_b()), 240)
    stop_checking.set()
    await checking
    await check_invariants(pool)
    assert outcomes.get("add", 0) > CLIENTS and outcomes.get("evictions", 0) > 0, outcomes
    async with pool.connection() as conn:
        plan = await (await conn.execute("SELECT instrument_count FROM tier_b_entries")).fetchone()
        held = await (
            await conn.execute("SELECT count(*) AS n FROM subscription_owners WHERE owner_kind = 'tier_b'")
        ).fetchone()
        active = await (
            await conn.execute(
                "SELECT count(*) AS n FROM watchlist_items w WHERE state = 'ACTIVE' AND instrument_count <> "
                "(SELECT count(*) FROM subscription_owners o "
                "WHERE o.owner_kind = 'unit' AND o.owner_id = w.item_id::text)"
            )
        ).fetchone()
    # Tier B (NIFTY, +/-5 strikes, the expiry's future) was never evicted.
    assert plan["instrument_count"] == held["n"] == 24
    assert active["n"] == 0  # every active unit is whole
    for channel in channels:
        await channel.close()
