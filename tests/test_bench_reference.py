"""bench.feed.reference: the reference fan-out streams each Full packet of a subscribed
instrument as the gateway's Tick, its send stamp (the volume) carried through, numbered per
instrument, in batches released by its clock."""

from __future__ import annotations

import asyncio
import time

from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2

from bench.feed.reference import FanOut
from services import dhan as codec
from services.feed.gateway.streams import STREAM_TICKS

NSE_EQ = 1  # the NSE_EQ segment byte on the wire


def _key(security_id: int) -> common_pb2.InstrumentKey:
    return common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_NSE_EQ, security_id=security_id)


def _full(security_id: int, stamp: int) -> bytes:
    return codec.encode_full(
        NSE_EQ, security_id, 101.5, 10, 1_790_000_000, 101.0, stamp, 5, 6, 0, 0, 0, 100, 99, 102, 98
    )


def test_full_packets_become_the_gateways_ticks_with_their_stamps() -> None:
    fanout = FanOut()
    sink = fanout.attach([_key(11)])
    fanout.on_frame(_full(11, 1234))
    fanout.on_frame(codec.encode_prev_close(NSE_EQ, 11, 99.0, 0))  # not a tick
    fanout.on_frame(_full(12, 999))  # nobody streams it
    fanout.on_frame(_full(11, 1240))
    response = feed_pb2.StreamTicksResponse.FromString(STREAM_TICKS.batch(sink.entries, time.time_ns()))
    ticks = response.batch.ticks
    assert [(t.key.security_id, t.sequence, t.volume) for t in ticks] == [(11, 1, 1234), (11, 2, 1240)]
    assert all(t.last_price == 101.5 and t.receive_time_micros > 0 for t in ticks)
    assert response.batch.sent_at.seconds > 0
    assert fanout.counters["packets"] == 4 and fanout.counters["ticks_in"] == 2


def test_the_clock_releases_a_stream_with_ticks_waiting() -> None:
    async def scenario() -> list[feed_pb2.StreamTicksResponse]:
        fanout = FanOut()
        clock = asyncio.create_task(fanout.clock())
        request = feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=[_key(11)]))
        stream = fanout.stream_ticks(request, None)
        try:
            snapshot = await asyncio.wait_for(anext(stream), 5)
            fanout.on_frame(_full(11, 1234))
            batch = await asyncio.wait_for(anext(stream), 5)
        finally:
            clock.cancel()
            await stream.aclose()
        return [snapshot, feed_pb2.StreamTicksResponse.FromString(batch)]

    snapshot, batch = asyncio.run(scenario())
    assert snapshot.WhichOneof("body") == "snapshot"
    assert [(t.sequence, t.volume) for t in batch.batch.ticks] == [(1, 1234)]
