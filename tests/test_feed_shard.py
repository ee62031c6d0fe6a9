"""A feed shard against the simulator: it follows its assignment, subscribes in messages of
at most 100, caches last values, streams them to the gateway, and recovers from every fault
the simulator can inject."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from dataserver.feed.v1 import feed_pb2, shard_pb2, shard_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as pb

from services.feed.records import iter_records
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.test_subscription_capacity import add


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir) as running:
        yield running


async def test_shard_subscribes_its_assignment_and_streams_last_values(feed: FeedUnderTest) -> None:
    shard = feed.shards[0].runtime
    # 12 instruments: the stock, 5 strikes x CE/PE, the expiry's future.
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)
    await eventually(lambda: feed.subscriptions_on_broker() == [12], what="12 subscriptions on the broker")
    connection = feed.simulator.connections()[0]
    assert {mode for _, _, mode in connection.subscriptions} == {"FULL"}
    await eventually(
        lambda: len(shard.cache.ticks) == 12 and len(shard.cache.previous_close) == 12, what="a full cache"
    )
    async with grpc.aio.insecure_channel(feed.shards[0].app.address) as channel:
        # Issue 15: a shard accepts only the deployment's service key.
        stream = shard_pb2_grpc.ShardServiceStub(channel).StreamShardTicks(
            shard_pb2.StreamShardTicksRequest(gateway_id="test"),
            metadata=(("authorization", f"Bearer {feed.subscription.settings.service_token}"),),
        )
        hello = await stream.read()
        assert hello.hello.shard_id == 0 and hello.hello.shard_epoch == shard.epoch
        snapshot = (await stream.read()).snapshot
        assert len(snapshot.instruments) == 12 and snapshot.packets.count >= 24
        assert all(i.subscribed for i in snapshot.instruments)
        last: dict[bytes, int] = {}
        for sequence, _, packet in iter_records(snapshot.packets.records):
            last[packet[3:8]] = max(last.get(packet[3:8], 0), sequence)
        seen = 0
        while seen < 50:
            message = await asyncio.wait_for(stream.read(), 5)
            if message.HasField("packets"):
                for sequence, received, packet in iter_records(message.packets.records):
                    key = packet[3:8]
                    assert sequence == last.get(key, 0) + 1  # per-instrument numbering, no gaps
                    last[key] = sequence
                    assert received > 0 and packet[0] in (2, 4, 5, 6, 8)
                    seen += 1
        stream.cancel()


async def test_more_than_100_instruments_go_in_several_messages(feed: FeedUnderTest) -> None:
    await add(feed.subscription, "alice", "SBIN", strikes_each_side=30)  # 124 instruments
    await add(feed.subscription, "bob", "HDFCBANK", strikes_each_side=30)
    await eventually(lambda: feed.subscriptions_on_broker() == [248], what="248 subscriptions")
    assert feed.simulator.connections()[0].requests >= 3  # the simulator refuses > 100 per message
    items = await feed.subscription.stub.ListWatchlistItems(
        pb.ListWatchlistItemsRequest(), metadata=await feed.subscription.user("bob")
    )
    await feed.subscription.stub.RemoveWatchlistItem(
        pb.RemoveWatchlistItemRequest(item_id=items.watchlist_items[0].item_id),
        metadata=await feed.subscription.user("bob"),
    )
    await eventually(lambda: feed.subscriptions_on_broker() == [124], what="the removal reaching the broker")


async def test_reconnect_resubscribes_everything(feed: FeedUnderTest) -> None:
    shard = feed.shards[0].runtime
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)
    await eventually(lambda: feed.subscriptions_on_broker() == [12], what="subscriptions")
    first = feed.simulator.connections()[0].id
    feed.simulator.drop("all")
    await eventually(lambda: [c.id for c in feed.simulator.connections()] not in ([], [first]), what="a new connection")
    await eventually(lambda: feed.subscriptions_on_broker() == [12], what="a full resubscribe")
    assert shard.reconnect_count >= 1


async def test_a_silent_feed_trips_the_watchdog(feed: FeedUnderTest) -> None:
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)
    await eventually(lambda: feed.subscriptions_on_broker() == [12], what="subscriptions")
    first = feed.simulator.connections()[0].id
    feed.simulator.silence("all")
    await eventually(
        lambda: any(c.id != first and len(c.subscriptions) == 12 for c in feed.simulator.connections()),
        timeout=10,
        what="a reconnect after silence",
    )


async def test_805_backs_off_long_and_807_stops(feed: FeedUnderTest) -> None:
    shard = feed.shards[0].runtime
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)
    await eventually(lambda: feed.subscriptions_on_broker() == [12], what="subscriptions")
    feed.simulator.disconnect("all", 805)
    await eventually(lambda: shard.state == feed_pb2.CONNECTION_STATE_BACKING_OFF, what="backing off")
    status = shard.status()
    assert status.last_disconnect_code == 805 and "too many" in status.last_disconnect_reason
    assert status.next_retry_at.ToSeconds() - status.last_disconnect_at.ToSeconds() >= 0.9  # the long back-off
    await eventually(lambda: feed.subscriptions_on_broker() == [12], timeout=5, what="the reconnect after 805")
    health: list[bool] = []
    shard.on_health = health.append
    feed.simulator.disconnect("all", 807)
    await eventually(lambda: shard.state == feed_pb2.CONNECTION_STATE_STOPPED, what="stopped")
    assert health == [False] and shard.status().last_disconnect_code == 807
    handshakes = feed.simulator.health()["handshakes"]
    await asyncio.sleep(1.0)  # proving an absence takes a while: a retry would come within the back-off's first step
    # No retry at all, let alone a tight loop (which a look at the open connections could miss).
    assert feed.simulator.health()["handshakes"] == handshakes and feed.simulator.connections() == []


async def test_garbage_is_counted_not_fatal(feed: FeedUnderTest) -> None:
    shard = feed.shards[0].runtime
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)
    await eventually(lambda: feed.subscriptions_on_broker() == [12], what="subscriptions")
    before = shard.ingest.counters.packets
    feed.simulator.garbage("all", size=37, count=5)
    await eventually(lambda: shard.ingest.counters.protocol_errors >= 1, what="protocol errors counted")
    await eventually(lambda: shard.ingest.counters.packets > before + 20, what="ticks still flowing")
    assert shard.state == feed_pb2.CONNECTION_STATE_CONNECTED and shard.reconnect_count == 0


async def test_instruments_without_a_first_tick_are_flagged(database_url: str, masters_dir: Path) -> None:
    async with running_feed(database_url, masters_dir, feed_first_tick_seconds=0.3) as feed:
        shard = feed.shards[0].runtime
        await add(feed.subscription, "alice", "RELIANCE", underlying_only=True)
        await eventually(lambda: feed.subscriptions_on_broker() == [1], what="the first subscription")
        feed.simulator.silence("all")
        await add(feed.subscription, "bob", "SBIN", strikes_each_side=1)  # asked while the feed is silent
        flagged = await eventually(
            lambda: shard.status().instruments_awaiting_first_tick, timeout=5, what="late first ticks flagged"
        )
        assert flagged == 8  # the stock, 1 strike each side x CE/PE, the expiry's future
        # The watchdog reconnects; the resubscribed instruments tick and the flag clears.
        await eventually(
            lambda: shard.status().instruments_awaiting_first_tick == 0 and shard.reconnect_count >= 1,
            timeout=10,
            what="first ticks after the reconnect",
        )
