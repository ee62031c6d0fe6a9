"""Capacity: LRU eviction of whole Tier A units (exactly which, in which order), Tier B
never evicted, adds that could never fit, Tier B plans, re-centring and end of day."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from dataserver.common.v1 import common_pb2
from dataserver.subscription.v1 import subscription_pb2 as pb

from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription
from tests.test_subscription_watchlists import expect, invariants

# 2 connections x 60: room for a little Tier B and two 52-instrument stock units (the stock,
# 25 strikes x CE/PE and the future of the expiry).
BUDGET: dict[str, Any] = {"feed_connections": 2, "feed_instruments_per_connection": 60}
RELIANCE = common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_NSE_EQ, security_id=2885)
NIFTY_NOV_FUTURE = 7494208  # the generated master's NIFTY future of 2026-11-23


@pytest_asyncio.fixture(loop_scope="session")
async def service(database_url: str, masters_dir: Path) -> AsyncIterator[SubscriptionUnderTest]:
    async with running_subscription(database_url, masters_dir, **BUDGET) as running:
        yield running


def idx(security_id: int) -> pb.TierBInstrument:
    return pb.TierBInstrument(
        key=common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_IDX_I, security_id=security_id)
    )


async def add(service: SubscriptionUnderTest, user: str, symbol: str, **fields: Any) -> pb.AddWatchlistItemResponse:
    return await service.stub.AddWatchlistItem(
        pb.AddWatchlistItemRequest(symbol=symbol, **fields), metadata=await service.user(user)
    )


async def states(service: SubscriptionUnderTest) -> dict[str, str]:
    rows = await service.rows("SELECT user_id || ':' || symbol AS unit, state FROM watchlist_items ORDER BY item_id")
    return {r["unit"]: r["state"] for r in rows}


async def total(service: SubscriptionUnderTest) -> int:
    return int((await service.rows("SELECT count(*) AS n FROM subscriptions"))[0]["n"])


async def test_lru_evicts_whole_units_oldest_first_and_never_tier_b(service: SubscriptionUnderTest) -> None:
    # Tier B holds the NIFTY index and the RELIANCE stock itself.
    plan = await service.stub.SetTierBPlan(
        pb.SetTierBPlanRequest(instruments=[idx(13), pb.TierBInstrument(key=RELIANCE)]), metadata=service.admin
    )
    assert plan.instruments_added == 2
    a = await add(service, "alice", "RELIANCE")  # 52, one of them shared with Tier B
    b = await add(service, "bob", "SBIN")  # 52
    assert not a.evictions and not b.evictions and await total(service) == 105
    # Reading alice's list touches her unit: bob's is now the least recently used.
    await service.stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=await service.user("alice"))
    c = await add(service, "carol", "HDFCBANK")
    assert [(e.user_id, e.symbol, e.reason, e.instruments_released) for e in c.evictions] == [
        ("", "SBIN", pb.EVICTION_REASON_CAPACITY, 52)
    ]
    d = await add(service, "dave", "INFY")
    assert [(e.symbol, e.instruments_released) for e in d.evictions] == [("RELIANCE", 51)]  # 2885 stays: Tier B
    assert await states(service) == {
        "alice:RELIANCE": "EVICTED",
        "bob:SBIN": "EVICTED",
        "carol:HDFCBANK": "ACTIVE",
        "dave:INFY": "ACTIVE",
    }
    tier_b = await service.rows("SELECT exchange_segment, security_id FROM subscriptions WHERE tier = 'B' ORDER BY 2")
    assert [(r["exchange_segment"], r["security_id"]) for r in tier_b] == [("IDX_I", 13), ("NSE_EQ", 2885)]
    assert await total(service) == 106 <= 120
    evictions = await service.rows("SELECT user_id FROM subscription_log WHERE action = 'EVICT' ORDER BY log_id")
    assert [r["user_id"] for r in evictions] == ["bob", "alice"]
    listed = await service.stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=await service.user("bob"))
    evicted = listed.watchlist_items[0]
    assert evicted.state == pb.WATCHLIST_ITEM_STATE_EVICTED and evicted.eviction_reason == pb.EVICTION_REASON_CAPACITY
    assert "least recently used" in evicted.eviction_message and evicted.HasField("evicted_at")
    status = await service.stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), metadata=service.admin)
    assert status.evictions_today == 2 and status.capacity == 120 and status.subscribed_count == 106
    # Re-adding an evicted item re-activates it, evicting the next least recently used.
    again = await add(service, "bob", "SBIN")
    assert again.created and again.watchlist_item.item_id == b.watchlist_item.item_id
    assert [e.symbol for e in again.evictions] == ["HDFCBANK"]
    await invariants(service)


async def test_an_add_that_could_never_fit_evicts_nothing(service: SubscriptionUnderTest) -> None:
    await add(service, "alice", "INFY", strikes_each_side=2)  # 12
    sbin = pb.TierBChain(underlying_symbol="SBIN", nearest_expiries=1, strikes_each_side=20, include_underlying=True)
    plan = await service.stub.SetTierBPlan(pb.SetTierBPlanRequest(chains=[sbin]), metadata=service.admin)
    assert plan.instruments_added == 84  # the stock, 41 strikes x CE/PE, the future: leaves 36 of 120 for Tier A
    details = await expect(add(service, "bob", "RELIANCE"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "120" in details and "cannot fit" in details and "84" in details
    assert await states(service) == {"alice:INFY": "ACTIVE"}


async def test_tier_b_plan_is_idempotent_and_takes_precedence(service: SubscriptionUnderTest) -> None:
    await add(service, "alice", "RELIANCE")  # 52
    await add(service, "bob", "CRUDEOIL")  # the future (its underlying, counted once) and 19 strikes: 39
    request = pb.SetTierBPlanRequest(
        chains=[
            pb.TierBChain(underlying_symbol="NIFTY", nearest_expiries=1, strikes_each_side=20, include_underlying=True)
        ],
        instruments=[idx(25)],
    )
    first = await service.stub.SetTierBPlan(request, metadata=service.admin)
    # NIFTY's nearest expiry lists 19 strikes: the index, 38 options, the expiry's future, and
    # BANKNIFTY's index.
    assert first.instruments_added == 41 and [e.symbol for e in first.evictions] == ["RELIANCE"]
    assert first.chains[0].plan_entry_id == f"chain:NIFTY:{first.chains[0].expiry_date}"
    second = await service.stub.SetTierBPlan(request, metadata=service.admin)
    assert (second.instruments_added, second.instruments_removed, len(second.evictions)) == (0, 0, 0)
    assert second.instruments_kept == 41
    plan = await service.stub.GetTierBPlan(pb.GetTierBPlanRequest(), metadata=service.admin)
    assert plan.instrument_count == 41 and plan.resolved_chains[0].underlying_symbol == "NIFTY"
    assert plan.chains[0].underlying_symbol == "NIFTY" and plan.instruments[0].key.security_id == 25
    smaller = await service.stub.SetTierBPlan(pb.SetTierBPlanRequest(instruments=[idx(25)]), metadata=service.admin)
    assert smaller.instruments_removed == 40 and smaller.instruments_added == 0
    dry = await service.stub.SetTierBPlan(
        pb.SetTierBPlanRequest(instruments=[idx(13)], dry_run=True), metadata=service.admin
    )
    assert dry.instruments_added == 1 and dry.instruments_removed == 1
    assert (await service.rows("SELECT security_id FROM subscriptions WHERE tier = 'B'"))[0]["security_id"] == 25
    await invariants(service)


async def test_recentre_adds_new_strikes_then_drops_old_ones(service: SubscriptionUnderTest) -> None:
    unit = await add(service, "alice", "NIFTY", strikes_each_side=3, underlying_price=25_900)
    item = unit.watchlist_item
    assert item.atm_strike == 25_900
    still = await service.stub.RecenterChain(
        pb.RecenterChainRequest(item_id=item.item_id, underlying_price=25_930), metadata=service.admin
    )
    assert not still.result.moved  # within one strike step: hysteresis
    moved = await service.stub.RecenterChain(
        pb.RecenterChainRequest(item_id=item.item_id, underlying_price=26_010), metadata=service.admin
    )
    result = moved.result
    assert result.moved and result.old_atm_strike == 25_900 and result.new_atm_strike == 26_000
    assert result.instruments_added == result.instruments_removed > 0
    held = await service.rows("SELECT count(*) AS n FROM subscription_owners WHERE owner_id = %s", item.item_id)
    assert held[0]["n"] == 1 + 14 + 1  # the index, 7 strikes x CE/PE, the expiry's future
    future = await service.rows(
        "SELECT count(*) AS n FROM subscription_owners WHERE owner_id = %s AND security_id = %s",
        item.item_id,
        NIFTY_NOV_FUTURE,
    )
    assert future[0]["n"] == 1  # the future stays as the window moves
    changes = await service.rows(
        "SELECT change FROM assignment_changes ORDER BY version DESC LIMIT %s", result.instruments_added * 2
    )
    kinds = [r["change"] for r in reversed(changes)]
    assert kinds == ["add"] * result.instruments_added + ["remove"] * result.instruments_removed
    audit = await service.rows("SELECT reason FROM subscription_log WHERE action = 'RECENTER'")
    assert len(audit) == 1 and "25900" in audit[0]["reason"]
    # Only its owner and admins may re-centre a watchlist item (issue 12 §6).
    details = await expect(
        service.stub.RecenterChain(
            pb.RecenterChainRequest(item_id=item.item_id, underlying_price=1), metadata=await service.user("bob")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert item.item_id in details and "not yours" in details
    own = await service.stub.RecenterChain(
        pb.RecenterChainRequest(item_id=item.item_id, underlying_price=25_900), metadata=await service.user("alice")
    )
    assert own.result.moved and own.result.new_atm_strike == 25_900
    await invariants(service)


async def test_end_of_day_clears_tier_a_keeps_tier_b_and_runs_once(service: SubscriptionUnderTest) -> None:
    await service.stub.SetTierBPlan(pb.SetTierBPlanRequest(instruments=[idx(13)]), metadata=service.admin)
    await add(service, "alice", "RELIANCE", strikes_each_side=2)
    await add(service, "bob", "NIFTY", strikes_each_side=2)
    done = await service.stub.EndOfDay(pb.EndOfDayRequest(trading_date="2026-11-20"), metadata=service.admin)
    assert (done.already_done, done.units_unsubscribed, done.items_deleted, done.users_affected) == (False, 2, 2, 2)
    # Each unit: 5 strikes x CE/PE, its underlying and its expiry's future; NIFTY's index value
    # stays with Tier B.
    assert done.instruments_unsubscribed == 12 + 11
    # A second run of the date clears what exists now (nothing): counts are the run's own.
    again = await service.stub.EndOfDay(pb.EndOfDayRequest(trading_date="2026-11-20"), metadata=service.admin)
    assert again.already_done and (again.units_unsubscribed, again.items_deleted) == (0, 0)
    rows = await service.rows("SELECT tier, security_id FROM subscriptions")
    assert [(r["tier"], r["security_id"]) for r in rows] == [("B", 13)]
    assert (await service.rows("SELECT count(*) AS n FROM watchlist_items"))[0]["n"] == 0


async def test_unsubscribe_all_tier_a_and_clear_watchlists(service: SubscriptionUnderTest) -> None:
    await add(service, "alice", "RELIANCE", strikes_each_side=2)
    await add(service, "bob", "NIFTY", strikes_each_side=2)
    out = await service.stub.UnsubscribeAllTierA(
        pb.UnsubscribeAllTierARequest(reason="maintenance"), metadata=service.admin
    )
    assert (out.units_unsubscribed, out.instruments_unsubscribed, out.users_affected) == (2, 24, 2)
    assert set((await states(service)).values()) == {"EVICTED"}
    cleared = await service.stub.ClearWatchlists(pb.ClearWatchlistsRequest(user_id="alice"), metadata=service.admin)
    assert (cleared.items_deleted, cleared.users_affected) == (1, 1)
    await expect(
        service.stub.ClearWatchlists(pb.ClearWatchlistsRequest(), metadata=service.admin),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert (
        await service.stub.ClearWatchlists(pb.ClearWatchlistsRequest(all_users=True), metadata=service.admin)
    ).items_deleted == 1


async def test_record_usage_bumps_only_the_units_asked_for(service: SubscriptionUnderTest) -> None:
    old = await add(service, "alice", "RELIANCE")  # 52, the least recently used
    await add(service, "bob", "SBIN")  # 52
    recent = await add(service, "alice", "INFY", strikes_each_side=2)  # 12
    usage = await service.stub.RecordUsage(
        pb.RecordUsageRequest(item_ids=[recent.watchlist_item.item_id]), metadata=await service.user("alice")
    )
    assert usage.units_touched == 1
    used = await service.rows("SELECT symbol FROM watchlist_items ORDER BY last_used_at, item_id")
    assert [r["symbol"] for r in used] == ["RELIANCE", "SBIN", "INFY"]  # alice's other unit kept its place
    # 116 of 120 held: 12 more evict the least recently used unit, alice's untouched one.
    carol = await add(service, "carol", "HDFCBANK", strikes_each_side=2)
    assert [(e.item_id, e.symbol) for e in carol.evictions] == [(old.watchlist_item.item_id, "RELIANCE")]
    await invariants(service)
