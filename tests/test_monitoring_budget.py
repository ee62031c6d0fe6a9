"""The budget's metrics on a running subscription service: use by tier, by shard and by user
(as a distribution), and evictions by reason, each agreeing with what the database holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from dataserver.subscription.v1 import subscription_pb2 as pb
from prometheus_client import REGISTRY

from tests.feed_fixtures import eventually
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription
from tests.test_subscription_capacity import BUDGET, RELIANCE, add, idx


@pytest_asyncio.fixture(loop_scope="session")
async def service(database_url: str, masters_dir: Path) -> AsyncIterator[SubscriptionUnderTest]:
    async with running_subscription(database_url, masters_dir, **BUDGET) as running:
        yield running


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def by_tier(service: SubscriptionUnderTest) -> dict[str, int]:
    rows = await service.rows("SELECT tier, count(*)::int AS n FROM subscriptions GROUP BY tier")
    return {r["tier"]: r["n"] for r in rows}


async def by_shard(service: SubscriptionUnderTest) -> dict[str, int]:
    rows = await service.rows("SELECT shard_id, count(*)::int AS n FROM subscriptions GROUP BY shard_id")
    return {str(r["shard_id"]): r["n"] for r in rows}


def shard_gauges(connections: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for family in REGISTRY.collect():
        if family.name == "subscription_shard_instruments":
            for s in family.samples:
                if int(s.labels["shard"]) < connections and s.value:
                    found[s.labels["shard"]] = int(s.value)
    return found


def users_by_instruments() -> dict[str, float]:
    return {le: sample("subscription_users_by_instruments", le=le) for le in ("50", "100", "+Inf")}


async def test_budget_gauges_and_evictions_follow_the_ledger(service: SubscriptionUnderTest) -> None:
    capacity_evictions = sample("subscription_evictions_total", reason="CAPACITY")
    plan = await service.stub.SetTierBPlan(
        pb.SetTierBPlanRequest(instruments=[idx(13), pb.TierBInstrument(key=RELIANCE)]), metadata=service.admin
    )
    assert plan.instruments_added == 2
    await add(service, "alice", "RELIANCE")  # 52, the stock shared with Tier B
    await add(service, "bob", "SBIN")  # 52
    tiers = await by_tier(service)
    assert tiers["B"] == 2 and sum(tiers.values()) == 105

    def tier_gauges_are(expected: dict[str, int]) -> bool:
        return all(sample("subscription_tier_instruments", tier=t) == expected.get(t, 0) for t in ("A", "B"))

    await eventually(lambda: tier_gauges_are(tiers), what=f"tier gauges {tiers}")
    shards = await by_shard(service)
    connections = BUDGET["feed_connections"]
    await eventually(lambda: shard_gauges(connections) == shards, what=f"shard gauges {shards}")
    await eventually(
        lambda: users_by_instruments() == {"50": 0, "100": 2, "+Inf": 2}, what="two users of 52 instruments"
    )
    assert sample("subscription_user_instruments_max") == 52

    # Reading alice's list touches her unit: bob's is the least recently used, and goes.
    await service.stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=await service.user("alice"))
    carol = await add(service, "carol", "HDFCBANK")
    assert [e.reason for e in carol.evictions] == [pb.EVICTION_REASON_CAPACITY]
    assert sample("subscription_evictions_total", reason="CAPACITY") == capacity_evictions + 1
    # Bob has no active item now: the distribution counts alice and carol.
    await eventually(
        lambda: (
            users_by_instruments() == {"50": 0, "100": 2, "+Inf": 2}
            and sample("subscription_tier_instruments", tier="A") > 0
        ),
        what="users after the eviction",
    )
    tiers = await by_tier(service)
    await eventually(lambda: tier_gauges_are(tiers), what=f"tier gauges {tiers} after the eviction")

    # An admin clearing a user's Tier A counts as ADMIN, once it has committed.
    admin_evictions = sample("subscription_evictions_total", reason="ADMIN")
    cleared = await service.stub.UnsubscribeAllTierA(
        pb.UnsubscribeAllTierARequest(user_id="carol", reason="test"), metadata=service.admin
    )
    assert cleared.units_unsubscribed == 1
    assert sample("subscription_evictions_total", reason="ADMIN") == admin_evictions + 1
    await eventually(lambda: users_by_instruments()["+Inf"] == 1, what="one user left with items")
