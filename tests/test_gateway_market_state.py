"""Market state at the gateway, on real parts (simulator, shard, gateway) and a ManualClock:
GetMarketState at fixed times (pre-open, open, after the close, the MCX evening, holidays),
its filter and bad segments, and tick streams that carry the state in their snapshots and
receive an event at each phase change (09:15, 15:30, and a clock jump over several)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.clock import ManualClock, SimulatedSessionClock
from services.common.market_calendar import IST
from services.feed.gateway.market import MarketWatch
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.test_feed_gateway import read_until

SEGMENTS = common_pb2.ExchangeSegment
IDX_I, NSE_EQ, NSE_FNO, NSE_CURRENCY, BSE_EQ, MCX_COMM, BSE_CURRENCY, BSE_FNO = (
    common_pb2.EXCHANGE_SEGMENT_IDX_I, common_pb2.EXCHANGE_SEGMENT_NSE_EQ, common_pb2.EXCHANGE_SEGMENT_NSE_FNO,
    common_pb2.EXCHANGE_SEGMENT_NSE_CURRENCY, common_pb2.EXCHANGE_SEGMENT_BSE_EQ, common_pb2.EXCHANGE_SEGMENT_MCX_COMM,
    common_pb2.EXCHANGE_SEGMENT_BSE_CURRENCY, common_pb2.EXCHANGE_SEGMENT_BSE_FNO,
)  # fmt: skip
ALL = [IDX_I, NSE_EQ, NSE_FNO, NSE_CURRENCY, BSE_EQ, MCX_COMM, BSE_CURRENCY, BSE_FNO]  # ExchangeSegment order
EQUITY_SESSION = [IDX_I, NSE_EQ, NSE_FNO, BSE_EQ, BSE_FNO]  # the segments with a pre-open
PRE_OPEN, OPEN, CLOSED, HOLIDAY = (
    feed_pb2.MARKET_PHASE_PRE_OPEN, feed_pb2.MARKET_PHASE_OPEN, feed_pb2.MARKET_PHASE_CLOSED,
    feed_pb2.MARKET_PHASE_HOLIDAY,
)  # fmt: skip


def ist(day: int, hour: int, minute: int = 0, month: int = 12) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=IST)


def at(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=IST)


def table(states: Any) -> dict[int, tuple[int, datetime, int]]:
    """segment -> (phase, next change, next phase)."""
    return {s.exchange_segment: (s.phase, at(s.next_change_at), s.next_phase) for s in states}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(ist(24, 10, month=11))  # Guru Nanak's birthday: NSE shut, MCX's evening open


@pytest.fixture
async def feed(database_url: str, masters_dir: Path, clock: ManualClock) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir, clock=clock) as running:
        yield running


async def market_state(feed: FeedUnderTest, *segments: common_pb2.ExchangeSegment) -> feed_pb2.GetMarketStateResponse:
    async with grpc.aio.insecure_channel(feed.gateway.app.address) as channel:
        reply: feed_pb2.GetMarketStateResponse = await feed_pb2_grpc.GatewayServiceStub(channel).GetMarketState(
            feed_pb2.GetMarketStateRequest(exchange_segments=segments), metadata=await feed.subscription.user("alice")
        )
        return reply


async def test_market_state_at_fixed_times(feed: FeedUnderTest, clock: ManualClock) -> None:
    # NSE/BSE's holiday is MCX's evening-only day: MCX is closed until 17:00, then open.
    reply = await market_state(feed)
    assert [s.exchange_segment for s in reply.segments] == ALL and at(reply.as_of) == ist(24, 10, month=11)
    states = table(reply.segments)
    assert states[NSE_FNO] == (HOLIDAY, ist(25, 0, month=11), CLOSED)
    assert states[MCX_COMM] == (CLOSED, ist(24, 17, month=11), OPEN)

    clock.set(ist(7, 8, 55))  # Monday, before the pre-open
    states = table((await market_state(feed)).segments)
    assert all(states[s] == (CLOSED, ist(7, 9), PRE_OPEN) for s in EQUITY_SESSION)
    assert states[NSE_CURRENCY] == states[BSE_CURRENCY] == states[MCX_COMM] == (CLOSED, ist(7, 9), OPEN)

    clock.set(ist(7, 9, 5))  # the pre-open call auction
    states = table((await market_state(feed)).segments)
    assert all(states[s] == (PRE_OPEN, ist(7, 9, 15), OPEN) for s in EQUITY_SESSION)
    assert states[NSE_CURRENCY] == (OPEN, ist(7, 17), CLOSED)
    assert states[MCX_COMM] == (OPEN, ist(7, 23, 55), CLOSED)  # the US is on standard time in December

    clock.set(ist(7, 10))
    states = table((await market_state(feed)).segments)
    assert all(states[s] == (OPEN, ist(7, 15, 30), CLOSED) for s in EQUITY_SESSION)

    clock.set(ist(7, 15, 45))  # after the close: closed until Tuesday's pre-open
    states = table((await market_state(feed)).segments)
    assert all(states[s] == (CLOSED, ist(8, 9), PRE_OPEN) for s in EQUITY_SESSION)
    assert states[MCX_COMM][0] == states[NSE_CURRENCY][0] == OPEN

    clock.set(ist(7, 21))  # the MCX evening
    states = table((await market_state(feed)).segments)
    assert states[MCX_COMM] == (OPEN, ist(7, 23, 55), CLOSED)
    assert states[NSE_CURRENCY] == (CLOSED, ist(8, 9), OPEN) and states[NSE_EQ][0] == CLOSED

    clock.set(ist(25, 10))  # Christmas, a Friday: a holiday everywhere until Monday's midnight
    states = table((await market_state(feed)).segments)
    assert all(states[s] == (HOLIDAY, ist(28, 0), CLOSED) for s in ALL)


async def test_market_state_filter_and_bad_segments(feed: FeedUnderTest, clock: ManualClock) -> None:
    clock.set(ist(7, 10))
    reply = await market_state(feed, MCX_COMM, NSE_FNO, MCX_COMM)  # duplicates ignored, ExchangeSegment order
    assert [s.exchange_segment for s in reply.segments] == [NSE_FNO, MCX_COMM]
    for bad in (cast(common_pb2.ExchangeSegment, 99), common_pb2.EXCHANGE_SEGMENT_UNSPECIFIED):  # unknown, unset
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await market_state(feed, NSE_EQ, bad)
        details = refused.value.details() or ""
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"exchange_segments[1] is {bad}" in details and "accepted" in details
        assert all(SEGMENTS.Name(s) in details for s in ALL)


def is_market_event(message: Any) -> bool:
    return message.WhichOneof("body") == "event" and message.event.HasField("market_phase")


async def phase_changes(stream: Any, count: int) -> dict[int, feed_pb2.StreamEvent]:
    """The next `count` market phase events of a stream, by segment."""
    events = {}
    for _ in range(count):
        message = await read_until(stream, is_market_event)
        events[message.event.market_phase.state.exchange_segment] = message.event
    return events


async def test_streams_carry_the_market_state_and_each_phase_change(feed: FeedUnderTest, clock: ManualClock) -> None:
    clock.set(ist(7, 9, 10))  # Monday's pre-open
    # The watch sees the clock's jump from the fixture's holiday before any stream opens.
    await eventually(lambda: feed.gateway.market.messages()[1].phase == PRE_OPEN, what="the watch in the pre-open")
    alice = await feed.subscription.user("alice")
    reliance = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=2885)
    commands: asyncio.Queue[feed_pb2.InteractiveStreamTicksRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[feed_pb2.InteractiveStreamTicksRequest]:
        while (item := await commands.get()) is not None:
            yield item

    async with grpc.aio.insecure_channel(feed.gateway.app.address) as channel:
        stub = feed_pb2_grpc.GatewayServiceStub(channel)
        ticks = stub.StreamTicks(
            feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=[reliance])), metadata=alice
        )
        first = await ticks.read()
        states = table(first.snapshot.market_states)
        assert list(states) == ALL and all(states[s] == (PRE_OPEN, ist(7, 9, 15), OPEN) for s in EQUITY_SESSION)
        interactive = stub.InteractiveStreamTicks(requests(), metadata=alice)  # no instruments: events still come
        await commands.put(
            feed_pb2.InteractiveStreamTicksRequest(correlation_id="a", add=feed_pb2.AddInstruments(keys=[reliance]))
        )
        snapshot = await read_until(interactive, lambda m: m.WhichOneof("body") == "snapshot")
        assert table(snapshot.snapshot.market_states) == states

        clock.set(ist(7, 9, 16))  # past the open
        for stream in (ticks, interactive):
            events = await phase_changes(stream, len(EQUITY_SESSION))
            assert sorted(events) == EQUITY_SESSION
            for event in events.values():
                change = event.market_phase
                assert (change.previous_phase, at(change.changed_at), at(event.occurred_at)) == (
                    PRE_OPEN, ist(7, 9, 15), ist(7, 9, 15),
                )  # fmt: skip
                assert table([change.state])[change.state.exchange_segment] == (OPEN, ist(7, 15, 30), CLOSED)

        clock.set(ist(7, 15, 31))  # past the close; the currencies and MCX trade on
        events = await phase_changes(ticks, len(EQUITY_SESSION))
        assert sorted(events) == EQUITY_SESSION
        for event in events.values():
            change = event.market_phase
            assert (change.previous_phase, at(change.changed_at)) == (OPEN, ist(7, 15, 30))
            assert table([change.state])[change.state.exchange_segment] == (CLOSED, ist(8, 9), PRE_OPEN)

        # A jump over several changes: Tuesday's pre-open skipped, the change seen at the
        # clock's time; MCX and the currencies closed and reopened in between, so for them
        # nothing changed (the next events are Tuesday's close, nothing before them).
        clock.set(ist(8, 10))
        events = await phase_changes(ticks, len(EQUITY_SESSION))
        assert sorted(events) == EQUITY_SESSION
        assert all(
            e.market_phase.previous_phase == CLOSED and e.market_phase.state.phase == OPEN for e in events.values()
        )
        assert all(at(e.market_phase.changed_at) == ist(8, 10) for e in events.values())
        clock.set(ist(8, 15, 30))
        events = await phase_changes(ticks, len(EQUITY_SESSION))
        assert sorted(events) == EQUITY_SESSION
        assert all(at(e.market_phase.changed_at) == ist(8, 15, 30) for e in events.values())
        ticks.cancel()
        await commands.put(None)
        interactive.cancel()


def test_the_simulated_clock_shows_an_open_market_and_its_wraps_change_nothing() -> None:
    wall = ManualClock(ist(7, 15, 29) + timedelta(seconds=30))
    watch = MarketWatch(SimulatedSessionClock(wall), lambda: [], poll_seconds=60.0)
    assert {m.phase for m in watch.messages()} == {OPEN}
    assert 30.0 < watch.seconds_to_due() < 31.0  # wakes at 15:30, when it wraps back to 09:15
    for step in (timedelta(minutes=2), timedelta(hours=9), timedelta(days=5)):  # the wrap, midnight, a weekend
        wall.advance(step)
        assert watch.refresh() == []
    assert {m.phase for m in watch.messages()} == {OPEN}
