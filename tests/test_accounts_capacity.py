"""Two broker accounts in one pool at Dhan's real limits: 2 accounts x 5 connections x 5,000
instruments filled to the combined 50,000 through watchlist adds (over the full generated
master), every invariant checked, then LRU eviction at the combined capacity; status and
metrics per account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import grpc
import pytest_asyncio
from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as pb
from prometheus_client import REGISTRY

from services.common.accounts import simulated_account
from services.common.keys import key_from_proto
from services.dhan.generator import load_equity_rows, load_fno_stocks
from services.subscription.account_usage import AccountLayout, account_figures
from tests.feed_fixtures import eventually
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription
from tests.test_subscription_capacity import add as small_add
from tests.test_subscription_failover import loads, report, settled, status, subscription
from tests.test_subscription_watchlists import invariants

PER_CONNECTION, PER_ACCOUNT = 5000, 5
ACCOUNT_CAPACITY = PER_ACCOUNT * PER_CONNECTION
CAPACITY = 2 * ACCOUNT_CAPACITY
WIDE = 200  # strikes each side: a whole chain per add, so the fill takes few adds
FILL_CLIENTS = 4
TIER_B = [
    common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_IDX_I, security_id=13),
    common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_IDX_I, security_id=25),
    common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_NSE_EQ, security_id=2885),
]


def most_instruments(strikes_each_side: int) -> int:
    """The most a stock unit can subscribe: calls and puts of 2k+1 strikes, the stock, and the
    future of the expiry."""
    return 2 * (2 * strikes_each_side + 1) + 2


@pytest_asyncio.fixture(loop_scope="session")
async def service(database_url: str, masters_dir: Path) -> AsyncIterator[SubscriptionUnderTest]:
    async with running_subscription(
        database_url,
        masters_dir,
        master_scale="full",
        accounts=(simulated_account(1), simulated_account(2)),
        feed_connections=2 * PER_ACCOUNT,
        feed_connections_per_account=PER_ACCOUNT,
        feed_instruments_per_connection=PER_CONNECTION,
        max_strikes_each_side=WIDE,
        user_max_items=10_000,
        user_max_instruments=CAPACITY,
    ) as running:
        yield running


async def stock_units(service: SubscriptionUnderTest) -> list[tuple[str, str]]:
    """Every (F&O stock, options expiry) pair of the master: each a distinct watchlist unit."""
    metadata = await service.user("reader")
    pairs = []
    async with grpc.aio.insecure_channel(service.settings.registry_addr) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for stock in load_fno_stocks(load_equity_rows()):
            request = registry_pb2.ListExpiriesRequest(
                underlying_symbol=stock.symbol, kind=registry_pb2.DERIVATIVE_KIND_OPTIONS, page_size=50
            )
            reply = await stub.ListExpiries(request, metadata=metadata)
            pairs += [(stock.symbol, e.expiry_date) for e in reply.expiries]
    return pairs


async def count(service: SubscriptionUnderTest, where: str = "true") -> int:
    return int((await service.rows(f"SELECT count(*) AS n FROM subscriptions WHERE {where}"))[0]["n"])


async def add(
    service: SubscriptionUnderTest, user: str, pair: tuple[str, str], strikes_each_side: int
) -> pb.AddWatchlistItemResponse:
    request = pb.AddWatchlistItemRequest(
        symbol=pair[0], expiry_date=pair[1], strikes_each_side=strikes_each_side, user_id=user
    )
    reply = await service.stub.AddWatchlistItem(request, metadata=service.admin, timeout=30)
    assert reply.created and not reply.evictions, pair
    return reply


async def fill(service: SubscriptionUnderTest, pairs: list[tuple[str, str]]) -> None:
    """Concurrent wide adds while a whole chain surely fits, then narrower ones one at a time
    down to the last instruments: no add ever needs an eviction."""
    queue = iter(pairs)
    held: set[tuple[int, int]] = {(k.exchange_segment, k.security_id) for k in TIER_B}
    in_flight = 0

    async def client(n: int) -> None:
        nonlocal in_flight
        while len(held) + (in_flight + 1) * most_instruments(WIDE) <= CAPACITY:
            in_flight += 1
            try:
                reply = await add(service, f"trader-{n}", next(queue), WIDE)
            finally:
                in_flight -= 1
            held.update((k.exchange_segment, k.security_id) for k in reply.watchlist_item.instruments)

    await asyncio.gather(*(client(n) for n in range(FILL_CLIENTS)))
    while (room := CAPACITY - await count(service)) >= most_instruments(1):
        await add(service, "trader-last", next(queue), min(WIDE, (room - 4) // 4))
    stocks = iter(dict.fromkeys(symbol for symbol, _ in pairs))
    while await count(service) < CAPACITY:  # the last few: stocks on their own
        request = pb.AddWatchlistItemRequest(symbol=next(stocks), underlying_only=True, user_id="trader-last")
        assert not (await service.stub.AddWatchlistItem(request, metadata=service.admin)).evictions


async def check_full(service: SubscriptionUnderTest) -> None:
    await invariants(service)  # refcounts exact, no connection over its limit, counts kept
    per_shard = await service.rows("SELECT shard_id, count(*)::int AS n FROM subscriptions GROUP BY 1 ORDER BY 1")
    assert [(r["shard_id"], r["n"]) for r in per_shard] == [(s, PER_CONNECTION) for s in range(10)]
    per_account = await service.rows(
        "SELECT shard_id / %s AS account, count(*)::int AS n FROM subscriptions GROUP BY 1 ORDER BY 1", PER_ACCOUNT
    )
    assert [(r["account"], r["n"]) for r in per_account] == [(0, ACCOUNT_CAPACITY), (1, ACCOUNT_CAPACITY)]
    await check_tier_b(service)


async def check_tier_b(service: SubscriptionUnderTest) -> None:
    rows = await service.rows(
        "SELECT s.exchange_segment, s.security_id FROM subscriptions s JOIN subscription_owners o "
        "USING (exchange_segment, security_id) WHERE o.owner_kind = 'tier_b' ORDER BY 1, 2"
    )
    assert [(r["exchange_segment"], r["security_id"]) for r in rows] == [("IDX_I", 13), ("IDX_I", 25), ("NSE_EQ", 2885)]


def gauge(name: str, account: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"account": account})


def gauge_is(name: str, account: str, value: float) -> bool:
    return gauge(name, account) == value


async def check_status(service: SubscriptionUnderTest) -> None:
    status = await service.stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), metadata=service.admin)
    assert (status.capacity, status.connection_count, status.subscribed_count) == (CAPACITY, 10, CAPACITY)
    assert [(s.shard_id, s.account_id, s.connection_index, s.instrument_count) for s in status.shards] == [
        (n, f"sim-{1 + n // PER_ACCOUNT}", n % PER_ACCOUNT, PER_CONNECTION) for n in range(10)
    ]
    assert [
        (a.account_id, a.connection_count, a.capacity, a.subscribed_count, a.utilization, a.connected_shards)
        for a in status.accounts
    ] == [(f"sim-{n}", PER_ACCOUNT, ACCOUNT_CAPACITY, ACCOUNT_CAPACITY, 1.0, PER_ACCOUNT) for n in (1, 2)]
    assert all(a.credentials_version == 0 and not a.HasField("rotated_at") for a in status.accounts)
    for account in ("sim-1", "sim-2"):
        await eventually(
            partial(gauge_is, "subscription_account_instruments", account, ACCOUNT_CAPACITY),
            what=f"the instruments gauge of {account}",
        )
        assert gauge("subscription_account_capacity", account) == ACCOUNT_CAPACITY
        assert gauge("subscription_account_shards_connected", account) == PER_ACCOUNT


async def test_two_accounts_fill_to_50000_then_evict_the_least_recently_used(service: SubscriptionUnderTest) -> None:
    plan = await service.stub.SetTierBPlan(
        pb.SetTierBPlanRequest(instruments=[pb.TierBInstrument(key=k) for k in TIER_B]), metadata=service.admin
    )
    assert plan.instruments_added == len(TIER_B)
    pairs = await stock_units(service)
    await fill(service, pairs)
    assert await count(service) == CAPACITY
    await check_full(service)
    await check_status(service)

    # At the combined capacity, an add evicts whole units, least recently used first: the
    # oldest unit was just used, so the next oldest go.
    first = (await service.rows("SELECT item_id, user_id FROM watchlist_items ORDER BY item_id LIMIT 1"))[0]
    oldest = str(first["item_id"])
    touched = await service.stub.RecordUsage(
        pb.RecordUsageRequest(item_ids=[oldest], user_id=first["user_id"]), metadata=service.admin
    )
    assert touched.units_touched == 1
    lru = await service.rows(
        "SELECT item_id FROM watchlist_items WHERE state = 'ACTIVE' ORDER BY last_used_at, item_id LIMIT 20"
    )
    held = {(r["exchange_segment"], r["security_id"]) for r in await service.rows("SELECT * FROM subscriptions")}
    used = await service.rows("SELECT symbol, expiry_date FROM watchlist_items WHERE expiry_date IS NOT NULL")
    unused = next(pair for pair in pairs if pair not in {(r["symbol"], r["expiry_date"].isoformat()) for r in used})
    reply = await service.stub.AddWatchlistItem(
        pb.AddWatchlistItemRequest(symbol=unused[0], expiry_date=unused[1], strikes_each_side=12, user_id="late"),
        metadata=service.admin,
    )
    new = {key_from_proto(k) for k in reply.watchlist_item.instruments}
    evicted = [e.item_id for e in reply.evictions]
    assert evicted and evicted == [str(r["item_id"]) for r in lru[: len(evicted)]] and oldest not in evicted
    assert all(e.reason == pb.EVICTION_REASON_CAPACITY for e in reply.evictions)
    released = sum(e.instruments_released for e in reply.evictions)
    total = await count(service)
    assert total == CAPACITY - released + len(new - held) <= CAPACITY
    assert released - reply.evictions[-1].instruments_released < len(new - held)  # no unit evicted needlessly
    await invariants(service)
    await check_tier_b(service)
    status = await service.stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), metadata=service.admin)
    assert status.evictions_today == len(evicted) and status.subscribed_count == total
    assert sum(a.subscribed_count for a in status.accounts) == total
    assert all(a.subscribed_count <= ACCOUNT_CAPACITY for a in status.accounts)


async def test_an_account_down_fails_over_to_the_other_and_rebalances_back(
    database_url: str, masters_dir: Path
) -> None:
    """All five shards of one account down (its token expired, say): failover moves their
    instruments to the other account's shards within the per-connection limit, new adds go
    there too, and a rebalance spreads over both accounts once the first is back."""
    expired = "broker disconnect 807: access token expired"
    async with subscription(
        database_url,
        masters_dir,
        accounts=(simulated_account(1), simulated_account(2)),
        feed_connections=2 * PER_ACCOUNT,
        feed_connections_per_account=PER_ACCOUNT,
        feed_instruments_per_connection=30,
        feed_failover_seconds=0.0,
        move_settle_seconds=0.3,
    ) as service:
        for user, symbol, width in (("alice", "RELIANCE", 12), ("bob", "SBIN", 12), ("carol", "INFY", 5)):
            await small_add(service, user, symbol, strikes_each_side=width)  # 52 + 52 + 24
        assert set(await loads(service)) == set(range(10))
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        for shard in range(PER_ACCOUNT):
            await report(service, shard, False, expired, down_since=long_ago)

        async def failed_over() -> bool:
            return await settled(service) and set(await loads(service)) == {5, 6, 7, 8, 9}

        await eventually(failed_over, what="sim-1's instruments on sim-2's shards")
        assert sum((await loads(service)).values()) == 128 and max((await loads(service)).values()) <= 30
        await invariants(service)
        now = await status(service)
        assert [(a.account_id, a.connected_shards, a.subscribed_count) for a in now.accounts] == [
            ("sim-1", 0, 0),
            ("sim-2", PER_ACCOUNT, 128),
        ]
        assert all(s.down_reason == expired for s in now.shards[:PER_ACCOUNT])
        await eventually(
            partial(gauge_is, "subscription_account_shards_connected", "sim-1", 0), what="sim-1's connected gauge"
        )
        await small_add(service, "dave", "TCS", strikes_each_side=2)  # 12 more, on sim-2's shards only
        assert set(await loads(service)) == {5, 6, 7, 8, 9} and sum((await loads(service)).values()) == 140
        for shard in range(PER_ACCOUNT):
            await report(service, shard, True)
        moved = await service.stub.Rebalance(pb.RebalanceRequest(), metadata=service.admin)
        assert moved.spread_before >= 27 and moved.spread_after <= 1
        await eventually(partial(settled, service), what="the rebalance's moves to finish")
        assert set(await loads(service)) == set(range(10)) and max((await loads(service)).values()) <= 14
        after = await status(service)
        assert [(a.account_id, a.connected_shards) for a in after.accounts] == [("sim-1", 5), ("sim-2", 5)]
        assert sum(a.subscribed_count for a in after.accounts) == 140
        await invariants(service)


def test_account_figures_follow_the_budget_s_connections() -> None:
    """A budget smaller than accounts x connections gives the last account only what it counts;
    a shard past the configured accounts has none."""
    layout = AccountLayout(("main", "second"), per_account=5, connections=7)
    assert [layout.place(s) for s in (0, 4, 5, 6, 12)] == [
        ("main", 0),
        ("main", 4),
        ("second", 0),
        ("second", 1),
        ("", 2),
    ]
    figures = account_figures(layout, [10, 0, 0, 0, 0, 20, 5], [True] * 5 + [False, True], per_connection=50)
    assert [(f.account_id, f.connection_count, f.capacity, f.subscribed, f.connected_shards) for f in figures] == [
        ("main", 5, 250, 10, 5),
        ("second", 2, 100, 25, 1),
    ]
    assert figures[1].utilization == 0.25
