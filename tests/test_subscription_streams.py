"""The assignment stream (snapshot, coalesced change sets, fresh snapshot after reconnect),
rebalancing make-before-break, and the watchlist event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from dataserver.subscription.v1 import subscription_pb2 as pb

from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription
from tests.test_subscription_capacity import add
from tests.test_subscription_watchlists import expect, invariants

TIMEOUT = 10.0


@pytest_asyncio.fixture(loop_scope="session")
async def service(database_url: str, masters_dir: Path) -> AsyncIterator[SubscriptionUnderTest]:
    async with running_subscription(
        database_url, masters_dir, feed_connections=3, feed_instruments_per_connection=100
    ) as running:
        yield running


def keys_of(assignments) -> set[tuple[int, int]]:
    return {(a.key.exchange_segment, a.key.security_id) for a in assignments}


async def next_message(stream, kinds=(pb.ASSIGNMENT_MESSAGE_KIND_SNAPSHOT, pb.ASSIGNMENT_MESSAGE_KIND_CHANGES)):
    while True:
        message = await asyncio.wait_for(stream.read(), TIMEOUT)
        if message.kind in kinds:
            return message


async def test_a_shard_gets_a_snapshot_then_one_change_set_per_add(service: SubscriptionUnderTest) -> None:
    await add(service, "alice", "RELIANCE", strikes_each_side=2)  # 12 instruments spread over 3 shards
    stream = service.stub.WatchAssignments(
        pb.WatchAssignmentsRequest(shard_id=0, watcher_id="test"), metadata=service.admin
    )
    snapshot = await next_message(stream)
    assert snapshot.kind == pb.ASSIGNMENT_MESSAGE_KIND_SNAPSHOT and snapshot.shard_limit == 100
    on_shard_0 = await service.rows("SELECT count(*) AS n FROM subscriptions WHERE shard_id = 0")
    assert len(snapshot.assignments) == on_shard_0[0]["n"] == 4
    unit = await add(service, "bob", "SBIN", strikes_each_side=20)  # 84 instruments
    changes = await next_message(stream)
    assert changes.kind == pb.ASSIGNMENT_MESSAGE_KIND_CHANGES and changes.version > snapshot.version
    assert len(changes.added) == 28 and not changes.removed  # one change set, ~a third of 84
    await service.stub.RemoveWatchlistItem(
        pb.RemoveWatchlistItemRequest(item_id=unit.watchlist_item.item_id), metadata=await service.user("bob")
    )
    removal = await next_message(stream)
    assert keys_of([type("A", (), {"key": k}) for k in removal.removed]) == keys_of(changes.added)
    stream.cancel()
    # A reconnect starts from a fresh snapshot whatever it missed meanwhile.
    await add(service, "carol", "INFY", strikes_each_side=2)
    again = service.stub.WatchAssignments(pb.WatchAssignmentsRequest(shard_id=0), metadata=service.admin)
    fresh = await next_message(again)
    rows = await service.rows("SELECT exchange_segment, security_id FROM subscriptions WHERE shard_id = 0")
    assert fresh.kind == pb.ASSIGNMENT_MESSAGE_KIND_SNAPSHOT and len(fresh.assignments) == len(rows)
    again.cancel()


async def test_mode_upgrades_reach_the_shard_as_updates(service: SubscriptionUnderTest) -> None:
    from dataserver.common.v1 import common_pb2

    await add(service, "alice", "RELIANCE", underlying_only=True, mode=common_pb2.FEED_MODE_TICKER)
    row = (await service.rows("SELECT shard_id, feed_mode FROM subscriptions"))[0]
    assert row["feed_mode"] == "TICKER"
    stream = service.stub.WatchAssignments(pb.WatchAssignmentsRequest(shard_id=row["shard_id"]), metadata=service.admin)
    await next_message(stream)
    await add(service, "bob", "RELIANCE", underlying_only=True)  # FULL: the highest mode wins
    update = await next_message(stream)
    assert [u.mode for u in update.updated] == [common_pb2.FEED_MODE_FULL] and not update.added
    stream.cancel()


async def test_rebalance_moves_make_before_break_within_limits(service: SubscriptionUnderTest) -> None:
    await add(service, "alice", "RELIANCE", strikes_each_side=10)  # 43 + 43 over 3 shards
    await add(service, "bob", "SBIN", strikes_each_side=10)
    units = await service.stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=await service.user("alice"))
    # Skew the shards by hand so there is something to even out.
    await service.rows("UPDATE subscriptions SET shard_id = 0 WHERE shard_id = 2 RETURNING 1")
    loads = await service.rows("SELECT shard_id, count(*) AS n FROM subscriptions GROUP BY 1 ORDER BY 1")
    assert [r["shard_id"] for r in loads] == [0, 1]
    streams = {
        s: service.stub.WatchAssignments(pb.WatchAssignmentsRequest(shard_id=s), metadata=service.admin) for s in (0, 2)
    }
    for stream in streams.values():
        await next_message(stream)
    dry = await service.stub.Rebalance(pb.RebalanceRequest(dry_run=True), metadata=service.admin)
    assert dry.spread_before > 1 and dry.spread_after <= 1
    assert (await service.rows("SELECT count(*) AS n FROM subscriptions WHERE moving_to_shard IS NOT NULL"))[0][
        "n"
    ] == 0
    moved = await service.stub.Rebalance(pb.RebalanceRequest(), metadata=service.admin)
    assert len(moved.moves) == len(dry.moves) > 0 and moved.spread_after <= 1
    moving = {(m.key.exchange_segment, m.key.security_id) for m in moved.moves if m.to_shard_id == 2}
    # Make: the target subscribes first, while the source still holds the instrument.
    make = await next_message(streams[2])
    assert keys_of(make.added) == moving
    status = await service.stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), metadata=service.admin)
    assert (
        all(s.instrument_count <= s.limit for s in status.shards) and sum(s.moves_in_flight for s in status.shards) > 0
    )
    # Break: after the settle time the source lets go.
    removed: set[tuple[int, int]] = set()
    while not moving <= removed:
        message = await next_message(streams[0])
        removed |= {(k.exchange_segment, k.security_id) for k in message.removed}
    assert (await service.rows("SELECT count(*) AS n FROM subscriptions WHERE moving_to_shard IS NOT NULL"))[0][
        "n"
    ] == 0
    history = await service.stub.GetSubscription(
        pb.GetSubscriptionRequest(key=moved.moves[0].key), metadata=service.admin
    )
    phases = [e.action for e in history.history if e.action == pb.AUDIT_ACTION_MOVE]
    assert len(phases) == 2 and history.subscription.shard_id == moved.moves[0].to_shard_id
    for stream in streams.values():
        stream.cancel()
    assert units.total_size == 1
    await invariants(service)


async def test_subscriptions_can_be_listed_filtered_and_inspected(service: SubscriptionUnderTest) -> None:
    await add(service, "alice", "RELIANCE", strikes_each_side=2)
    await add(service, "bob", "RELIANCE", strikes_each_side=2)
    await add(service, "bob", "INFY", underlying_only=True)
    alice = await service.user("alice")
    mine = await service.stub.ListSubscriptions(pb.ListSubscriptionsRequest(user_id="alice"), metadata=alice)
    assert mine.total_size == 12  # the stock, 5 strikes x CE/PE, the expiry's future
    bobs = await service.stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(user_id="bob", page_size=5), metadata=service.admin
    )
    assert bobs.total_size == 13 and len(bobs.subscriptions) == 5 and bobs.next_page_token
    on_shard = await service.stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(shard_id=1, tier=pb.TIER_A), metadata=alice
    )
    assert (
        on_shard.total_size
        == (await service.rows("SELECT count(*) AS n FROM subscriptions WHERE shard_id = 1"))[0]["n"]
    )
    await expect(
        service.stub.ListSubscriptions(pb.ListSubscriptionsRequest(shard_id=7), metadata=alice),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect(
        service.stub.ListSubscriptions(pb.ListSubscriptionsRequest(user_id="bob"), metadata=alice),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    one = mine.subscriptions[0]
    detail = await service.stub.GetSubscription(pb.GetSubscriptionRequest(key=one.key), metadata=alice)
    assert detail.subscription.ref_count == 2 == len(detail.subscription.owners)
    # Issue 15: another user's owner entry stays, without its ids (alice sees bob as "").
    assert {o.user_id for o in detail.subscription.owners} == {"alice", ""}
    assert detail.history[-1].action == pb.AUDIT_ACTION_SUBSCRIBE and detail.history[-1].actor == "alice"
    missing = pb.GetSubscriptionRequest(key=type(one.key)(exchange_segment=one.key.exchange_segment, security_id=1))
    await expect(service.stub.GetSubscription(missing, metadata=alice), grpc.StatusCode.NOT_FOUND)
    status = await service.stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), metadata=alice)
    assert [u.user_id for u in status.users] == ["alice"] and status.user_count == 2
    assert status.subscribed_count == 13 and abs(status.utilization - 13 / 300) < 1e-9
    audit = await service.stub.ListAuditEntries(
        pb.ListAuditEntriesRequest(user_id="alice", page_size=4), metadata=alice
    )
    assert len(audit.audit_entries) == 4 and audit.next_page_token
    await expect(
        service.stub.ListAuditEntries(pb.ListAuditEntriesRequest(), metadata=alice), grpc.StatusCode.PERMISSION_DENIED
    )


async def test_watchlist_events_show_adds_and_evictions(service: SubscriptionUnderTest) -> None:
    alice = await service.user("alice")
    events = service.stub.WatchWatchlistEvents(pb.WatchWatchlistEventsRequest(), metadata=alice)
    first = await asyncio.wait_for(events.read(), TIMEOUT)
    assert first.HasField("snapshot") and not first.snapshot.watchlist_items
    added = await add(service, "alice", "RELIANCE", strikes_each_side=2)
    event = await asyncio.wait_for(events.read(), TIMEOUT)
    while not event.HasField("event"):
        event = await asyncio.wait_for(events.read(), TIMEOUT)
    assert event.event.kind == pb.WATCHLIST_EVENT_KIND_ADDED and len(event.event.instruments_added) == 12
    assert event.event.watchlist_item.item_id == added.watchlist_item.item_id
    await service.stub.UnsubscribeAllTierA(pb.UnsubscribeAllTierARequest(user_id="alice"), metadata=service.admin)
    event = await asyncio.wait_for(events.read(), TIMEOUT)
    while not event.HasField("event"):
        event = await asyncio.wait_for(events.read(), TIMEOUT)
    assert event.event.kind == pb.WATCHLIST_EVENT_KIND_EVICTED
    assert event.event.watchlist_item.state == pb.WATCHLIST_ITEM_STATE_EVICTED
    events.cancel()
    await expect(
        service.stub.WatchWatchlistEvents(pb.WatchWatchlistEventsRequest(user_id="-"), metadata=alice).read(),
        grpc.StatusCode.PERMISSION_DENIED,
    )
