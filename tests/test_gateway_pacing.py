"""A terminal stream's pacing, driven by hand: the dispatcher's releases are called directly
(its clock never runs), so each step is deterministic."""

from __future__ import annotations

import asyncio
import time

from dataserver.common.v1 import common_pb2

from services.feed.codec import encode_full
from services.feed.gateway.hub import Hub, ShardLink
from services.feed.gateway.streams import STREAM_TICKS, Dispatcher, TerminalStream
from services.feed.records import RECORD_HEADER, instrument_key

SEGMENT, SECURITY_ID = 2, 40_001  # NSE_FNO
KEY = instrument_key(SEGMENT, SECURITY_ID)


def _tick(hub: Hub, link: ShardLink, sequence: int) -> None:
    packet = encode_full(SEGMENT, SECURITY_ID, 100.0 + sequence, 75, 1_700_000_000, 100.0, 1000 + sequence,
                         10, 10, 5, 5, 5, 99.0, 100.0, 101.0, 98.0)
    hub.apply(link, RECORD_HEADER.pack(sequence, int(time.time() * 1e6)) + packet)


def _stream() -> tuple[Hub, ShardLink, Dispatcher, TerminalStream]:
    hub = Hub((), gateway_id="test")
    link = ShardLink(0, "unused", epoch="e1")
    dispatcher = Dispatcher(period=3600.0)  # its clock never fires here: releases are explicit
    stream = TerminalStream(hub, dispatcher, common_pb2.FEED_MODE_FULL, STREAM_TICKS)
    stream.add([KEY])
    return hub, link, dispatcher, stream


async def test_a_released_stream_sends_what_is_pending() -> None:
    hub, link, dispatcher, stream = _stream()
    batches = stream.run()
    first = asyncio.create_task(anext(batches))
    await asyncio.sleep(0)  # the generator now waits for work
    _tick(hub, link, 1)
    assert stream in dispatcher.due
    for _ in range(5):  # loop iterations in which only a release could wake it
        await asyncio.sleep(0)
    assert not first.done(), "nothing may be sent before the clock releases the stream"
    assert stream.release(time.monotonic())
    assert isinstance(await asyncio.wait_for(first, 1.0), bytes)
    await batches.aclose()


async def test_a_stream_the_clock_found_writing_sends_as_soon_as_its_write_completes() -> None:
    hub, link, dispatcher, stream = _stream()
    batches = stream.run()
    first = asyncio.create_task(anext(batches))
    await asyncio.sleep(0)
    _tick(hub, link, 1)
    stream.release(time.monotonic())
    await asyncio.wait_for(first, 1.0)
    # The generator is suspended in its yield: gRPC is still writing that batch.
    _tick(hub, link, 2)
    assert not stream.release(time.monotonic()), "a stream still writing is not released"
    # Without the missed release it would wait a whole period (an hour here) for the clock.
    second = await asyncio.wait_for(anext(batches), 1.0)
    assert isinstance(second, bytes) and stream not in dispatcher.due and not stream.pending
    await batches.aclose()
