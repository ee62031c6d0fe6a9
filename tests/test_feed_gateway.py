"""The gateway on real shards and the simulator: snapshot first, numbered batches, statuses,
my-watchlist streams with eviction events, interactive streams, conflation of a terminal that
stops reading, and streams that survive a shard restart."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as spb
from prometheus_client import REGISTRY

from services.common.keys import wire_key
from services.feed import gateway_server, shard_server
from services.feed.gateway.hub import HISTORY
from services.feed.gateway.streams import TerminalStream
from tests.feed_fixtures import FeedUnderTest, eventually, gateway_settings, running_feed
from tests.test_subscription_capacity import add

NSE_EQ = common_pb2.EXCHANGE_SEGMENT_NSE_EQ


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir) as running:
        yield running


def gateway_stub(feed: FeedUnderTest) -> tuple[grpc.aio.Channel, feed_pb2_grpc.GatewayServiceStub]:
    channel = grpc.aio.insecure_channel(feed.gateway.app.address)
    return channel, feed_pb2_grpc.GatewayServiceStub(channel)


async def read_until(stream: Any, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    async def loop() -> Any:
        while True:
            message = await stream.read()
            if predicate(message):
                return message

    return await asyncio.wait_for(loop(), timeout)


async def subscribed_keys(feed: FeedUnderTest, user: str) -> list[common_pb2.InstrumentKey]:
    listed = await feed.subscription.stub.ListWatchlistItems(
        spb.ListWatchlistItemsRequest(include_instruments=True), metadata=await feed.subscription.user(user)
    )
    return [k for item in listed.watchlist_items for k in item.instruments]


async def open_stream(
    feed: FeedUnderTest, channel: grpc.aio.Channel, keys: list[common_pb2.InstrumentKey]
) -> tuple[Any, dict[int, int], TerminalStream]:
    """StreamTicks over `keys` as admin, its snapshot read: the call, the snapshot's sequence
    per security id, and the gateway's side of the stream (the only one open)."""
    stream = feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(
        feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=keys)),
        metadata=feed.subscription.admin,
    )
    seen = {t.key.security_id: t.sequence for t in (await stream.read()).snapshot.ticks}
    terminal = await eventually(lambda: next(iter(feed.gateway.terminals.streams), None), what="the stream registered")
    return stream, seen, terminal


def behind_history(feed: FeedUnderTest, terminal: TerminalStream) -> Callable[[], bool]:
    """Whether some instrument of a stream that stopped reading moved past the values kept for
    it since the stream last took it (once the transport buffers are full, ticks pile up at
    the gateway)."""
    instruments = feed.gateway.hub.instruments
    return lambda: any(
        (latest := instruments[k].latest) is not None and latest.sequence - first >= HISTORY
        for k, first in terminal.pending.items()
    )


async def test_stream_by_list_starts_with_last_values_then_numbered_batches(feed: FeedUnderTest) -> None:
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)  # the stock, 10 options, the future
    keys = await subscribed_keys(feed, "alice")
    await eventually(
        lambda: len([i for i in feed.gateway.hub.instruments.values() if i.latest is not None and i.mode]) >= 12,
        what="values at the gateway",
    )
    unknown = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=999_999_999)
    not_upstream = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=11536)  # TCS: real, not subscribed
    channel, stub = gateway_stub(feed)
    async with channel:
        stream = stub.StreamTicks(
            feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=[*keys, unknown, not_upstream])),
            metadata=await feed.subscription.user("alice"),
        )
        first = await stream.read()
        assert first.WhichOneof("body") == "snapshot"
        statuses = {(s.key.security_id): s.status for s in first.snapshot.instruments}
        assert statuses[999_999_999] == feed_pb2.INSTRUMENT_STATUS_NOT_FOUND
        assert statuses[11536] == feed_pb2.INSTRUMENT_STATUS_NOT_SUBSCRIBED_UPSTREAM
        assert sum(1 for s in statuses.values() if s == feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED) == 12
        assert len(first.snapshot.ticks) == 12
        last = {t.key.security_id: t.sequence for t in first.snapshot.ticks}
        full = first.snapshot.ticks[0]
        assert full.last_price > 0 and len(full.depth) == 5 and full.depth[0].bid_price < full.depth[0].ask_price
        assert full.present_parts & feed_pb2.TICK_PART_FULL and full.receive_time_micros > 0
        waits_before = _samples("feed_gateway_batch_wait_seconds_count")
        writes_before = _samples("feed_gateway_batch_write_seconds_count")
        batches = 0
        while batches < 20:
            message = await asyncio.wait_for(stream.read(), 5)
            if message.WhichOneof("body") != "batch":
                continue
            batches += 1
            for tick in message.batch.ticks:
                assert tick.sequence > last[tick.key.security_id]
                last[tick.key.security_id] = tick.sequence
        stream.cancel()
    # Every batch is timed at the gateway: its wait, and its write (done once the next one is taken).
    assert _samples("feed_gateway_batch_wait_seconds_count") - waits_before >= 20
    assert _samples("feed_gateway_batch_write_seconds_count") - writes_before >= 19
    assert _samples("feed_gateway_batch_wait_seconds_sum") > 0


def _samples(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_batch_options_bound_each_batch_and_bad_ones_are_refused(feed: FeedUnderTest) -> None:
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)
    keys = await subscribed_keys(feed, "alice")
    channel, stub = gateway_stub(feed)
    async with channel:
        options = feed_pb2.BatchOptions(max_batch_size=2)
        options.max_batch_delay.FromMilliseconds(50)
        stream = stub.StreamTicks(
            feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=keys), batch_options=options),
            metadata=await feed.subscription.user("alice"),
        )
        sizes: list[int] = []

        async def batches() -> None:  # until a full batch shows the limit is what binds
            while len(sizes) < 10 or 2 not in sizes:
                message = await stream.read()
                if message.WhichOneof("body") == "batch":
                    sizes.append(len(message.batch.ticks))

        await asyncio.wait_for(batches(), 20)
        stream.cancel()
        assert max(sizes) <= 2 and 2 in sizes, sizes
        bad = feed_pb2.StreamTicksRequest(
            instruments=feed_pb2.InstrumentList(keys=keys), batch_options=feed_pb2.BatchOptions(max_batch_size=-1)
        )
        try:
            await stub.StreamTicks(bad, metadata=await feed.subscription.user("alice")).read()
            raise AssertionError("a negative max_batch_size must fail")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_size" in (error.details() or "")


async def test_get_snapshot_gives_last_quotes(feed: FeedUnderTest) -> None:
    await add(feed.subscription, "alice", "RELIANCE", underlying_only=True)
    key = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=2885)
    channel, stub = gateway_stub(feed)
    async with channel:

        async def has_value() -> bool:
            reply = await stub.GetSnapshot(feed_pb2.GetSnapshotRequest(keys=[key]), metadata=feed.subscription.admin)
            return bool(reply.ticks)

        await eventually(has_value, what="RELIANCE's last value at the gateway")
        reply = await stub.GetSnapshot(
            feed_pb2.GetSnapshotRequest(
                keys=[key, common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=1)],
                mode=common_pb2.FEED_MODE_TICKER,
            ),
            metadata=feed.subscription.admin,
        )
        assert reply.ticks[0].last_price > 0 and not reply.ticks[0].depth
        assert [k.security_id for k in reply.missing_keys] == [1]
        try:
            await stub.GetSnapshot(feed_pb2.GetSnapshotRequest(), metadata=feed.subscription.admin)
            raise AssertionError("an empty request must fail")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_my_watchlist_follows_changes_and_shows_evictions(feed: FeedUnderTest) -> None:
    alice = await feed.subscription.user("alice")
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=1)  # 3 strikes x CE/PE, the stock, the future
    channel, stub = gateway_stub(feed)
    async with channel:
        stream = stub.StreamTicks(feed_pb2.StreamTicksRequest(my_watchlist=True), metadata=alice)
        first = await stream.read()
        assert len(first.snapshot.instruments) == 8
        added = await add(feed.subscription, "alice", "SBIN", strikes_each_side=1)
        event = await read_until(stream, lambda m: m.WhichOneof("body") == "event" and m.event.HasField("watchlist"))
        assert event.event.watchlist.kind == spb.WATCHLIST_EVENT_KIND_ADDED
        sbin = {k.security_id for k in added.watchlist_item.instruments}
        await read_until(
            stream, lambda m: m.WhichOneof("body") == "batch" and any(t.key.security_id in sbin for t in m.batch.ticks)
        )
        await feed.subscription.stub.UnsubscribeAllTierA(
            spb.UnsubscribeAllTierARequest(user_id="alice"), metadata=feed.subscription.admin
        )
        evicted = await read_until(
            stream,
            lambda m: (
                m.WhichOneof("body") == "event"
                and m.event.HasField("watchlist")
                and m.event.watchlist.kind == spb.WATCHLIST_EVENT_KIND_EVICTED
            ),
        )
        assert evicted.event.watchlist.watchlist_item.state == spb.WATCHLIST_ITEM_STATE_EVICTED
        stream.cancel()


async def test_interactive_stream_adds_and_removes_with_statuses(feed: FeedUnderTest) -> None:
    await add(feed.subscription, "alice", "RELIANCE", underlying_only=True)
    await eventually(
        lambda: feed.gateway.hub.upstream(wire_key("NSE_EQ", 2885)), what="the gateway hearing of the subscription"
    )
    reliance = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=2885)
    bogus = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=999_999_998)
    commands: asyncio.Queue[feed_pb2.InteractiveStreamTicksRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[feed_pb2.InteractiveStreamTicksRequest]:
        while (item := await commands.get()) is not None:
            yield item

    channel, stub = gateway_stub(feed)
    async with channel:
        call = stub.InteractiveStreamTicks(requests(), metadata=await feed.subscription.user("alice"))
        await commands.put(
            feed_pb2.InteractiveStreamTicksRequest(
                correlation_id="c1", add=feed_pb2.AddInstruments(keys=[reliance, bogus])
            )
        )
        result = await read_until(call, lambda m: m.WhichOneof("body") == "result")
        assert result.result.correlation_id == "c1"
        assert [s.status for s in result.result.instruments] == [
            feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED,
            feed_pb2.INSTRUMENT_STATUS_NOT_FOUND,
        ]
        await read_until(call, lambda m: m.WhichOneof("body") == "batch" and m.batch.ticks[0].key.security_id == 2885)
        await commands.put(
            feed_pb2.InteractiveStreamTicksRequest(
                correlation_id="c2", remove=feed_pb2.RemoveInstruments(keys=[reliance])
            )
        )
        removed = await read_until(call, lambda m: m.WhichOneof("body") == "result")
        assert removed.result.instruments[0].status == feed_pb2.INSTRUMENT_STATUS_REMOVED
        await commands.put(
            feed_pb2.InteractiveStreamTicksRequest(
                correlation_id="c3", batch_options=feed_pb2.BatchOptions(max_batch_size=-5)
            )
        )
        refused = await read_until(call, lambda m: m.WhichOneof("body") == "result")
        assert refused.result.correlation_id == "c3" and "max_batch_size" in refused.result.message
        await commands.put(
            feed_pb2.InteractiveStreamTicksRequest(
                correlation_id="c4", batch_options=feed_pb2.BatchOptions(max_batch_size=10)
            )
        )
        applied = await read_until(call, lambda m: m.WhichOneof("body") == "result")
        assert applied.result.correlation_id == "c4" and not applied.result.message
        await commands.put(None)
        call.cancel()


async def test_a_terminal_that_stops_reading_holds_one_value_per_instrument(feed: FeedUnderTest) -> None:
    await add(feed.subscription, "alice", "SBIN", strikes_each_side=10)  # 43 instruments
    keys = await subscribed_keys(feed, "alice")
    channel, _ = gateway_stub(feed)
    async with channel:
        stream, seen, terminal = await open_stream(feed, channel, keys)
        # Stop reading; the ticks keep coming (20/s per instrument).
        await eventually(
            behind_history(feed, terminal), timeout=30, what="the stalled stream falling behind the history"
        )
        assert 0 < len(terminal.pending) <= len(keys)  # one entry per instrument, however long the stall

        # Resume: the stream catches up with the latest values, and the skipped ones show as gaps.
        async def catch_up() -> None:
            jumped = False
            while not (jumped and terminal.conflated > 0):
                message = await stream.read()
                if message.WhichOneof("body") != "batch":
                    continue
                for tick in message.batch.ticks:
                    previous = seen.get(tick.key.security_id)
                    jumped = jumped or (previous is not None and tick.sequence > previous + 1)
                    seen[tick.key.security_id] = tick.sequence

        await asyncio.wait_for(catch_up(), 20)
        stream.cancel()


async def test_streams_survive_a_shard_restart_and_show_the_gap(feed: FeedUnderTest) -> None:
    await add(feed.subscription, "alice", "RELIANCE", underlying_only=True)
    key = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=2885)
    channel, stub = gateway_stub(feed)
    async with channel:
        stream = stub.StreamTicks(
            feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=[key])),
            metadata=feed.subscription.admin,
        )
        await stream.read()
        before = await read_until(stream, lambda m: m.WhichOneof("body") == "batch")
        old = feed.shards[0]
        port = int(old.app.address.rsplit(":", 1)[1])
        await old.app.stop(0)
        interrupted = await read_until(
            stream, lambda m: m.WhichOneof("body") == "event" and m.event.HasField("upstream")
        )
        assert interrupted.event.upstream.state == feed_pb2.UPSTREAM_STATE_INTERRUPTED
        settings = dataclasses.replace(old.runtime.settings, grpc_port=port)
        restarted = shard_server.create_server(settings)
        await feed.servers.enter_async_context(restarted.app)
        feed.shards[0] = restarted
        restored = await read_until(
            stream, lambda m: m.WhichOneof("body") == "event" and m.event.HasField("upstream"), timeout=20
        )
        assert (
            restored.event.upstream.state == feed_pb2.UPSTREAM_STATE_RESTORED
            and restored.event.upstream.shard_restarted
        )
        after = await read_until(stream, lambda m: m.WhichOneof("body") == "batch", timeout=20)
        last_before = max(t.sequence for t in before.batch.ticks)
        assert min(t.sequence for t in after.batch.ticks) > last_before + 1  # the gap shows
        stream.cancel()


async def test_gateway_replicas_give_the_same_ticks_the_same_numbers(feed: FeedUnderTest) -> None:
    """Replicas follow the same shards (deploy/k8s runs two): a terminal that reconnects to
    the other one finds the numbering it knew, as long as both saw the same shard epochs."""
    await add(feed.subscription, "alice", "RELIANCE", underlying_only=True)
    key = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=2885)
    reliance = wire_key("NSE_EQ", 2885)

    def applied() -> int:
        instrument = feed.gateway.hub.instruments.get(reliance)
        return instrument.latest.sequence if instrument is not None and instrument.latest is not None else 0

    await eventually(lambda: applied() >= 20, what="ticks at the first gateway before the second starts")
    second = gateway_server.create_server(gateway_settings(feed.subscription, feed.shards), feed.subscription.pool)
    async with second.app:

        async def ticks(address: str) -> dict[int, tuple[float, int]]:
            seen: dict[int, tuple[float, int]] = {}
            async with grpc.aio.insecure_channel(address) as channel:
                stream = feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(
                    feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=[key])),
                    metadata=feed.subscription.admin,
                )
                while len(seen) < 30:
                    message = await stream.read()
                    body = message.batch.ticks if message.WhichOneof("body") == "batch" else message.snapshot.ticks
                    seen.update((t.sequence, (t.last_price, t.volume)) for t in body)
                stream.cancel()
            return seen

        first, other = await asyncio.wait_for(
            asyncio.gather(ticks(feed.gateway.app.address), ticks(second.app.address)), 20
        )
        both = first.keys() & other.keys()
        assert len(both) >= 20, (sorted(first), sorted(other))
        assert all(first[n] == other[n] for n in both), [
            (n, first[n], other[n]) for n in sorted(both) if first[n] != other[n]
        ]
