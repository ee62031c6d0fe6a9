"""Part 6 of bench.subscription: the pool's fill with two broker accounts against one, in the
same run, against the same registry. Target: two accounts' 0 -> 50,000 in at most
RATIO_TARGET times the time of one account's 0 -> 25,000.

Both fills add the same kind of unit, wider than the default so that 50,000 instruments fit in
the master's (stock, expiry) pairs: WIDTH strikes each side, 2 x (2 x WIDTH + 1) options and
the stock. Each runs on a fresh subscription process (FEED_ACCOUNTS=1, then 2: 5, then 10
connections of 5,000) over a fresh migrated database of its own (the registry keeps its own),
so both start from the same state: no rows, and no planner statistics (a database whose
subscription tables were analysed while empty plans every add's lookups as scans of a tiny
table, and a fill then slows as the tables grow). The registry's chains at that width are
computed once before either fill (it caches them by width), so neither pays for the other's
misses; the pairs come in the same order, so the first 25,000's units are the same in both.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from bench.children import Child
from bench.report import Report
from bench.subscription_calls import get_status
from bench.subscription_fill import FILL_CLIENTS, Fill, FillShape, fill

WIDTH = 24
UNIT_SIZE = 2 * (2 * WIDTH + 1) + 1
ACCOUNT_CAPACITY = 5 * 5000  # Dhan's: 5 connections of 5,000 instruments
RATIO_TARGET = 2.2
STOP_SECONDS = 30.0


def run(
    report: Report,
    start: Callable[[int, str], Child],
    conninfo: str,
    registry_address: str,
    pairs: list[tuple[str, str]],
) -> None:
    """`start(accounts, conninfo)` starts the subscription service with that many simulated
    accounts on that database; `conninfo` is the bench's database (the new ones sit beside it)."""
    needed = 2 * ACCOUNT_CAPACITY
    if len(pairs) * (UNIT_SIZE - 1) < needed:
        raise RuntimeError(f"the master lists too few stock option expiries ({len(pairs)}) to fill {needed}")
    asyncio.run(_warm_chains(registry_address, pairs))
    fills: dict[int, Fill] = {}
    for accounts in (1, 2):
        shape = _shape(accounts)
        service = start(accounts, _fresh_database(conninfo, f"bench_subscription_{accounts}_accounts"))
        try:
            fills[accounts] = asyncio.run(_fill_from_empty(service, pairs, shape))
        finally:
            service.stop(STOP_SECONDS)
        _report_one(report, accounts, fills[accounts], shape)
    one, two = (fills[n].elapsed if fills[n].full(_shape(n)) else math.nan for n in (1, 2))
    report.add("subscription.accounts.fill_ratio", two / one, "x", target=RATIO_TARGET)
    report.note(
        f"fill with 2 accounts (50,000 over 10 connections) against 1 (25,000 over 5): {two:.1f} s against "
        f"{one:.1f} s, {two / one:.2f}x the time for 2x the instruments; {UNIT_SIZE}-instrument units "
        f"({WIDTH} strikes each side), {FILL_CLIENTS} clients"
    )


def _shape(accounts: int) -> FillShape:
    return FillShape(accounts * ACCOUNT_CAPACITY, UNIT_SIZE, WIDTH)


async def _warm_chains(registry_address: str, pairs: list[tuple[str, str]]) -> None:
    import grpc
    from dataserver.registry.v1 import registry_pb2 as rpb
    from dataserver.registry.v1 import registry_pb2_grpc

    async with grpc.aio.insecure_channel(registry_address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for symbol, expiry in pairs:
            await stub.GetOptionChain(
                rpb.GetOptionChainRequest(
                    underlying_symbol=symbol, expiry_date=expiry, strikes_each_side=WIDTH, use_last_price=True
                ),
                timeout=10,
            )


def _fresh_database(conninfo: str, name: str) -> str:
    """A new migrated database `name` on the bench's Postgres; its conninfo."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    from services.common.migrate import migrate

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    fresh = make_conninfo(conninfo, dbname=name)
    asyncio.run(migrate(fresh))
    return fresh


async def _fill_from_empty(service: Child, pairs: list[tuple[str, str]], shape: FillShape) -> Fill:
    import grpc
    from dataserver.subscription.v1 import subscription_pb2 as pb
    from dataserver.subscription.v1 import subscription_pb2_grpc

    async with grpc.aio.insecure_channel(service.address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stub = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        status = await get_status(stub, pb)
        if status.subscribed_count or status.capacity != shape.capacity:
            raise RuntimeError(f"not an empty pool of {shape.capacity}: {status.subscribed_count} of {status.capacity}")
        for _ in range(20):
            await get_status(stub, pb)
        return await fill(stub, pb, pairs, shape)


def _report_one(report: Report, accounts: int, result: Fill, shape: FillShape) -> None:
    prefix = f"subscription.accounts.fill_{accounts}"
    status: Any = result.status
    report.add(f"{prefix}.subscribed", status.subscribed_count, target=shape.full_at, op=">=")
    report.add(f"{prefix}_seconds", result.elapsed if result.full(shape) else math.nan, "s")
    report.add(f"{prefix}.errors", sum(result.errors.values()), target=0)
    if result.errors:
        report.note(f"errors by code: {dict(result.errors)}")
    used = ", ".join(f"{a.account_id} {a.subscribed_count}/{a.capacity}" for a in status.accounts)
    report.note(
        f"{accounts} account(s): {result.units} units, {status.subscribed_count} of {status.capacity} over "
        f"{status.connection_count} connections in {result.elapsed:.1f} s ({used}); {result.evictions} evictions"
    )
