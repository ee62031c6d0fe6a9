"""Upstream status reaches terminals: when the broker connection carrying a stream's
instruments drops, goes silent, is kicked (805) or refused (807), or their shard becomes
unreachable, the stream gets one INTERRUPTED event naming them and why, snapshots taken
meanwhile mark them stale, and a RESTORED event (then a snapshot) says when they are live
again. Nothing in Postgres changes. Also: the interactive stream's per-instrument status
events. On real parts: the simulator and its control API, shards, gateway, subscription
service and Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc, shard_pb2
from dataserver.subscription.v1 import subscription_pb2 as spb
from grpc_health.v1 import health_pb2

from services.common.clients import health_stub
from services.common.keys import proto_wire_key, wire_key, wire_key_proto
from services.feed import shard_server
from services.feed.gateway.hub import Hub, Instrument
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.gateway_fixtures import KEY, full_packet, records
from tests.test_feed_gateway import gateway_stub, read_until
from tests.test_subscription_capacity import add

NSE_EQ = common_pb2.EXCHANGE_SEGMENT_NSE_EQ
RELIANCE = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=2885)
Fault = Callable[[FeedUnderTest], Awaitable[Any]]


async def control(feed: FeedUnderTest, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """A call to the simulator's control API (HTTP/JSON)."""
    url = f"http://127.0.0.1:{feed.simulator.control_port}{path}"
    data = json.dumps(body or {}).encode() if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})

    def call() -> Any:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    return await asyncio.to_thread(call)


def is_upstream(message: Any) -> bool:
    return message.WhichOneof("body") == "event" and message.event.HasField("upstream")


async def assignment_rows(feed: FeedUnderTest) -> list[dict[str, Any]]:
    return await feed.subscription.rows(
        "SELECT exchange_segment, security_id, feed_mode, shard_id, tier, ref_count, moving_to_shard"
        " FROM subscriptions ORDER BY exchange_segment, security_id"
    )


async def shards_live(feed: FeedUnderTest) -> None:
    """Waits for every shard to be reachable and connected (a starting shard's instruments
    are stale until its first connection is up and subscribed)."""
    links = feed.gateway.hub.links
    await eventually(
        lambda: all(link.connected and link.status and not link.outage for link in links), what="shards live"
    )


async def live_values(feed: FeedUnderTest, *keys: common_pb2.InstrumentKey) -> None:
    instruments = feed.gateway.hub.instruments
    wanted = [proto_wire_key(k) for k in keys]
    await eventually(
        lambda: all((i := instruments.get(k)) is not None and i.latest is not None and i.mode for k in wanted),
        what="values at the gateway",
    )


def open_stream(feed: FeedUnderTest, channel: grpc.aio.Channel, keys: list[common_pb2.InstrumentKey]) -> Any:
    return feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(
        feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=keys)), metadata=feed.subscription.admin
    )


async def expect_outage(
    feed: FeedUnderTest,
    fault: Fault,
    cause: feed_pb2.UpstreamCause,
    *,
    code: int = 0,
    reason: str,
    while_stale: Fault | None = None,
    restore: Fault | None = None,
) -> feed_pb2.UpstreamStatusChange:
    """Streams RELIANCE, injects `fault`, and checks what the terminal sees: one INTERRUPTED
    with `cause`, then (after `restore`) RESTORED and a snapshot of it. Postgres is untouched."""
    await shards_live(feed)
    await add(feed.subscription, "alice", "RELIANCE", underlying_only=True)
    await live_values(feed, RELIANCE)
    rows = await assignment_rows(feed)
    channel, _ = gateway_stub(feed)
    async with channel:
        stream = open_stream(feed, channel, [RELIANCE])
        first = await stream.read()
        assert not first.snapshot.instruments[0].stale
        await fault(feed)
        interrupted = (await read_until(stream, is_upstream)).event.upstream
        assert interrupted.state == feed_pb2.UPSTREAM_STATE_INTERRUPTED
        assert feed_pb2.UpstreamCause.Name(interrupted.cause) == feed_pb2.UpstreamCause.Name(cause)
        assert list(interrupted.instruments) == [RELIANCE] and interrupted.affected_instruments == 1
        assert interrupted.disconnect_code == code and reason in interrupted.reason, interrupted
        assert interrupted.interrupted_at.seconds > 0 and interrupted.shard_id == 0
        if while_stale is not None:
            await while_stale(feed)
        if restore is not None:
            await restore(feed)
        restored = (await read_until(stream, is_upstream, timeout=30)).event.upstream
        assert restored.state == feed_pb2.UPSTREAM_STATE_RESTORED, restored
        assert restored.cause == feed_pb2.UPSTREAM_CAUSE_UNSPECIFIED and list(restored.instruments) == [RELIANCE]
        assert restored.interrupted_at == interrupted.interrupted_at
        snapshot = await stream.read()  # right after the event
        assert snapshot.WhichOneof("body") == "snapshot", snapshot
        assert [s.key for s in snapshot.snapshot.instruments] == [RELIANCE]
        assert not snapshot.snapshot.instruments[0].stale and len(snapshot.snapshot.market_states) == 8
        stream.cancel()
    assert await assignment_rows(feed) == rows
    return restored


async def expect_stale_snapshots(feed: FeedUnderTest, cause: feed_pb2.UpstreamCause, reason: str) -> None:
    """While stale: GetSnapshot lists it in `stale`, and a new stream's snapshot marks it."""
    channel, stub = gateway_stub(feed)
    async with channel:
        reply = await stub.GetSnapshot(feed_pb2.GetSnapshotRequest(keys=[RELIANCE]), metadata=feed.subscription.admin)
        assert [t.key for t in reply.ticks] == [RELIANCE] and len(reply.stale) == 1
        stale = reply.stale[0]
        assert stale.key == RELIANCE and stale.stale and stale.stale_cause == cause and reason in stale.stale_reason
        assert stale.stale_since.seconds > 0
        stream = open_stream(feed, channel, [RELIANCE])
        state = (await stream.read()).snapshot.instruments[0]
        assert state.status == feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED
        assert state.stale and state.stale_cause == cause and state.stale_since == stale.stale_since
        stream.cancel()


async def test_a_dropped_connection_is_interrupted_then_restored(database_url: str, masters_dir: Any) -> None:
    async with running_feed(database_url, masters_dir) as feed:
        reconnects = feed.shards[0].runtime.reconnect_count
        await expect_outage(
            feed,
            lambda f: control(f, "POST", "/connections/all/drop"),
            feed_pb2.UPSTREAM_CAUSE_RECONNECTING,
            reason="reconnecting",
        )
        assert feed.shards[0].runtime.reconnect_count == reconnects + 1


async def test_a_silent_connection_is_interrupted_by_the_watchdog(database_url: str, masters_dir: Any) -> None:
    async with running_feed(database_url, masters_dir, feed_watchdog_seconds=1.0) as feed:
        await expect_outage(
            feed,
            lambda f: control(f, "POST", "/connections/all/silence"),
            feed_pb2.UPSTREAM_CAUSE_SILENT,
            reason="silent for",
        )


async def test_a_kicked_connection_is_stale_while_it_backs_off(database_url: str, masters_dir: Any) -> None:
    async def while_kicked(feed: FeedUnderTest) -> None:
        await expect_stale_snapshots(feed, feed_pb2.UPSTREAM_CAUSE_KICKED, "805")
        status = feed.gateway.hub.statuses()[0]
        assert status.interruption_cause == feed_pb2.UPSTREAM_CAUSE_KICKED and status.interrupted_at.seconds > 0
        assert status.connection_state == feed_pb2.CONNECTION_STATE_BACKING_OFF

    async with running_feed(database_url, masters_dir, feed_kicked_backoff_seconds=3.0) as feed:
        await expect_outage(
            feed,
            lambda f: control(f, "POST", "/connections/all/disconnect", {"reason": 805}),
            feed_pb2.UPSTREAM_CAUSE_KICKED,
            code=805,
            reason="broker disconnect 805: too many connections",
            while_stale=while_kicked,
        )
        assert feed.gateway.hub.statuses()[0].interruption_cause == feed_pb2.UPSTREAM_CAUSE_UNSPECIFIED


async def test_an_unreachable_shard_is_interrupted_then_restored(database_url: str, masters_dir: Any) -> None:
    async with running_feed(database_url, masters_dir) as feed:
        old = feed.shards[0]

        async def stop(feed: FeedUnderTest) -> None:
            await old.app.stop(0)

        async def while_down(feed: FeedUnderTest) -> None:
            await expect_stale_snapshots(feed, feed_pb2.UPSTREAM_CAUSE_SHARD_UNREACHABLE, "shard 0 unreachable")
            assert not feed.gateway.hub.statuses()[0].reachable

        async def restart(feed: FeedUnderTest) -> None:
            port = int(old.app.address.rsplit(":", 1)[1])
            restarted = shard_server.create_server(dataclasses.replace(old.runtime.settings, grpc_port=port))
            await feed.servers.enter_async_context(restarted.app)
            feed.shards[0] = restarted

        restored = await expect_outage(
            feed,
            stop,
            feed_pb2.UPSTREAM_CAUSE_SHARD_UNREACHABLE,
            reason="shard 0 unreachable",
            while_stale=while_down,
            restore=restart,
        )
        assert restored.shard_restarted


async def _place_on_both_shards(feed: FeedUnderTest) -> dict[int, common_pb2.InstrumentKey]:
    """Adds stocks until each of the two shards carries one: a key per shard id."""
    hub = feed.gateway.hub
    per_shard: dict[int, common_pb2.InstrumentKey] = {}
    for symbol, security_id in (("RELIANCE", 2885), ("SBIN", 3045), ("INFY", 1594), ("TCS", 11536)):
        await add(feed.subscription, "alice", symbol, underlying_only=True)
        key = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=security_id)
        await live_values(feed, key)
        per_shard.setdefault(hub.instruments[wire_key("NSE_EQ", security_id)].shard_id or 0, key)
        if len(per_shard) == 2:
            return per_shard
    raise AssertionError(f"every stock went to one shard: {per_shard}")


async def _connection_of(feed: FeedUnderTest, key: common_pb2.InstrumentKey) -> int:
    listed = await control(feed, "GET", "/connections")
    for connection in listed["connections"]:
        if any(s[1] == key.security_id for s in connection["subscriptions"]):
            return int(connection["id"])
    raise AssertionError(f"no simulator connection carries {key}")


async def test_a_refused_account_stops_its_shard_without_retrying(database_url: str, masters_dir: Any) -> None:
    async with running_feed(database_url, masters_dir, shards=2) as feed:
        await shards_live(feed)
        per_shard = await _place_on_both_shards(feed)
        rows = await assignment_rows(feed)
        stopped, other = per_shard[0], per_shard[1]
        channel, stub = gateway_stub(feed)
        async with channel:
            stream = open_stream(feed, channel, [stopped, other])
            await stream.read()
            handshakes = (await control(feed, "GET", "/health"))["handshakes"]
            target = await _connection_of(feed, stopped)
            await control(feed, "POST", f"/connections/{target}/disconnect", {"reason": 807})
            interrupted = (await read_until(stream, is_upstream)).event.upstream
            assert interrupted.state == feed_pb2.UPSTREAM_STATE_INTERRUPTED and interrupted.shard_id == 0
            assert interrupted.cause == feed_pb2.UPSTREAM_CAUSE_STOPPED and interrupted.disconnect_code == 807
            assert "807: access token expired" in interrupted.reason and list(interrupted.instruments) == [stopped]
            # The shard says why, and turns NOT_SERVING.
            async with grpc.aio.insecure_channel(feed.shards[0].app.address) as shard_channel:
                health = health_stub(shard_channel)

                async def not_serving() -> bool:
                    reply = await health.Check(health_pb2.HealthCheckRequest())
                    return reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

                await eventually(not_serving, what="the stopped shard NOT_SERVING")
            status = (
                await stub.GetShardStatus(feed_pb2.GetShardStatusRequest(shard_id=0), metadata=feed.subscription.admin)
            ).shards[0]
            assert status.connection_state == feed_pb2.CONNECTION_STATE_STOPPED
            assert status.interruption_cause == feed_pb2.UPSTREAM_CAUSE_STOPPED and status.last_disconnect_code == 807
            reply = await stub.GetSnapshot(
                feed_pb2.GetSnapshotRequest(keys=[stopped, other]), metadata=feed.subscription.admin
            )
            assert [s.key for s in reply.stale] == [stopped] and reply.stale[0].stale_cause == interrupted.cause
            # No retry storm: while the other shard reconnects twice (two new handshakes), the
            # stopped one opens none.
            for _ in range(2):
                await control(feed, "POST", f"/connections/{await _connection_of(feed, other)}/drop")
                restored = await read_until(stream, lambda m: is_upstream(m) and m.event.upstream.shard_id == 1)
                assert restored.event.upstream.state == feed_pb2.UPSTREAM_STATE_INTERRUPTED
                restored = await read_until(stream, lambda m: is_upstream(m) and m.event.upstream.shard_id == 1)
                assert restored.event.upstream.state == feed_pb2.UPSTREAM_STATE_RESTORED
            assert (await control(feed, "GET", "/health"))["handshakes"] == handshakes + 2
            assert feed.shards[0].runtime.state == feed_pb2.CONNECTION_STATE_STOPPED
            stream.cancel()
        assert await assignment_rows(feed) == rows


async def test_the_interactive_stream_tells_status_changes(database_url: str, masters_dir: Any) -> None:
    async with running_feed(database_url, masters_dir) as feed:
        commands: asyncio.Queue[feed_pb2.InteractiveStreamTicksRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[feed_pb2.InteractiveStreamTicksRequest]:
            while (item := await commands.get()) is not None:
                yield item

        def status_event(message: Any) -> bool:
            return message.WhichOneof("body") == "event" and message.event.HasField("instrument_status")

        await shards_live(feed)
        alice = await feed.subscription.user("alice")
        channel, stub = gateway_stub(feed)
        async with channel:
            call = stub.InteractiveStreamTicks(requests(), metadata=alice)
            await commands.put(
                feed_pb2.InteractiveStreamTicksRequest(
                    correlation_id="c1", add=feed_pb2.AddInstruments(keys=[RELIANCE])
                )
            )
            result = await read_until(call, lambda m: m.WhichOneof("body") == "result")
            assert result.result.instruments[0].status == feed_pb2.INSTRUMENT_STATUS_NOT_SUBSCRIBED_UPSTREAM
            item = await add(feed.subscription, "alice", "RELIANCE", underlying_only=True)
            subscribed = (await read_until(call, status_event)).event.instrument_status
            assert subscribed.key == RELIANCE and subscribed.status == feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED
            assert subscribed.mode == common_pb2.FEED_MODE_FULL and not subscribed.stale
            await read_until(call, lambda m: m.WhichOneof("body") == "batch")  # its ticks flow
            await feed.subscription.stub.RemoveWatchlistItem(
                spb.RemoveWatchlistItemRequest(item_id=item.watchlist_item.item_id), metadata=alice
            )
            unsubscribed = (await read_until(call, status_event)).event.instrument_status
            assert unsubscribed.key == RELIANCE
            assert unsubscribed.status == feed_pb2.INSTRUMENT_STATUS_NOT_SUBSCRIBED_UPSTREAM and unsubscribed.message
            await commands.put(None)
            call.cancel()


# --- the gateway's bookkeeping, fed by hand (two shard links, no servers) -----------------


class Recorder:
    """A subscriber noting what the hub tells it."""

    def __init__(self) -> None:
        self.events: list[feed_pb2.UpstreamStatusChange] = []
        self.statuses: list[int] = []  # the instrument's upstream mode at each status change

    def mark(self, key: int, sequence: int) -> None:
        pass

    def upstream_changed(self, event: feed_pb2.UpstreamStatusChange) -> None:
        self.events.append(event)

    def status_changed(self, instrument: Instrument) -> None:
        self.statuses.append(instrument.mode)


def _shard_message(**body: Any) -> shard_pb2.StreamShardTicksResponse:
    return shard_pb2.StreamShardTicksResponse(**body)


def _status(cause: feed_pb2.UpstreamCause = feed_pb2.UPSTREAM_CAUSE_UNSPECIFIED, **fields: Any) -> Any:
    status = feed_pb2.ShardStatus(interruption_cause=cause, **fields)
    if cause:
        status.interrupted_at.FromSeconds(1_700_000_000 + int(fields.get("last_disconnect_code", 0)))
    return _shard_message(status=status)


def _shard_instrument() -> shard_pb2.ShardInstrument:
    return shard_pb2.ShardInstrument(key=wire_key_proto(KEY), mode=common_pb2.FEED_MODE_FULL, subscribed=True)


def _live_hub() -> tuple[Hub, Recorder]:
    """Two live shard links; shard 0 carries the instrument, followed by one subscriber."""
    hub = Hub(("unused:0", "unused:1"), gateway_id="test")
    for link in hub.links:
        hub._on_message(link, _shard_message(hello=shard_pb2.ShardHello(shard_id=link.shard_id, shard_epoch="e1")))
        instruments = [_shard_instrument()] if link.shard_id == 0 else []
        hub._on_message(link, _shard_message(snapshot=shard_pb2.ShardSnapshot(instruments=instruments)))
        hub._on_message(link, _status(connection_state=feed_pb2.CONNECTION_STATE_CONNECTED))
    recorder = Recorder()
    hub.attach(recorder, [KEY])
    return hub, recorder


def test_one_outage_is_announced_once_and_again_only_when_it_gets_worse() -> None:
    hub, recorder = _live_hub()
    link = hub.links[0]
    reconnecting = feed_pb2.UPSTREAM_CAUSE_RECONNECTING
    for state in (
        feed_pb2.CONNECTION_STATE_BACKING_OFF,
        feed_pb2.CONNECTION_STATE_CONNECTING,
        feed_pb2.CONNECTION_STATE_BACKING_OFF,
        feed_pb2.CONNECTION_STATE_CONNECTING,
    ):
        hub._on_message(link, _status(reconnecting, connection_state=state, last_disconnect_reason="closed"))
    assert [e.state for e in recorder.events] == [feed_pb2.UPSTREAM_STATE_INTERRUPTED]
    first = recorder.events[0]
    assert first.cause == reconnecting and list(first.instruments) == [wire_key_proto(KEY)]
    # Kicked: worse, announced again, the outage's start kept.
    kicked = _status(
        feed_pb2.UPSTREAM_CAUSE_KICKED, last_disconnect_code=805, last_disconnect_reason="too many connections"
    )
    hub._on_message(link, kicked)
    assert [e.cause for e in recorder.events] == [reconnecting, feed_pb2.UPSTREAM_CAUSE_KICKED]
    assert recorder.events[1].interrupted_at == first.interrupted_at and recorder.events[1].disconnect_code == 805
    # A retry after the back-off fails: easier, not announced, but snapshots say it.
    hub._on_message(link, _status(reconnecting, last_disconnect_reason="connect failed"))
    outage = hub.outage(KEY)
    assert len(recorder.events) == 2 and outage is not None and outage.cause == reconnecting
    hub._on_message(link, _status(connection_state=feed_pb2.CONNECTION_STATE_CONNECTED))
    assert recorder.events[-1].state == feed_pb2.UPSTREAM_STATE_RESTORED and hub.outage(KEY) is None
    assert recorder.statuses == []  # never unsubscribed


def test_instruments_moved_off_a_down_shard_are_restored_as_moved() -> None:
    hub, recorder = _live_hub()
    down, live = hub.links
    hub.apply(down, records(3, full_packet(100.0)))  # its numbering is the down shard's
    hub._on_message(down, _status(feed_pb2.UPSTREAM_CAUSE_STOPPED, last_disconnect_code=807))
    # Make before break: the live shard takes it while the down one still lists it.
    hub._on_message(
        live, _shard_message(instruments_change=shard_pb2.ShardInstrumentsChange(upserted=[_shard_instrument()]))
    )
    moved = recorder.events[-1]
    assert moved.state == feed_pb2.UPSTREAM_STATE_RESTORED and moved.cause == feed_pb2.UPSTREAM_CAUSE_MOVED
    assert moved.shard_id == 1 and list(moved.instruments) == [wire_key_proto(KEY)] and hub.outage(KEY) is None
    # Its ticks come from the live shard at once, though the down one has not let go.
    hub.apply(live, records(7, full_packet(101.0)))
    latest = hub.instruments[KEY].latest
    assert latest is not None and latest.message(0).last_price == 101.0 and latest.sequence == 5  # 3, a gap, 5
    hub._on_message(
        down, _shard_message(instruments_change=shard_pb2.ShardInstrumentsChange(removed=[wire_key_proto(KEY)]))
    )
    assert recorder.statuses == [] and hub.upstream(KEY)  # still subscribed: on the live shard


def test_break_before_make_says_unsubscribed_then_moved_and_subscribed() -> None:
    hub, recorder = _live_hub()
    down, live = hub.links
    hub._on_message(down, _status(feed_pb2.UPSTREAM_CAUSE_KICKED, last_disconnect_code=805))
    hub._on_message(
        down, _shard_message(instruments_change=shard_pb2.ShardInstrumentsChange(removed=[wire_key_proto(KEY)]))
    )
    assert recorder.statuses == [0]  # not subscribed upstream
    hub._on_message(
        live, _shard_message(instruments_change=shard_pb2.ShardInstrumentsChange(upserted=[_shard_instrument()]))
    )
    assert recorder.events[-1].cause == feed_pb2.UPSTREAM_CAUSE_MOVED and hub.outage(KEY) is None
    assert recorder.statuses == [0, common_pb2.FEED_MODE_FULL]
