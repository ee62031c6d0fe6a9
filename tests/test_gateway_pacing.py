"""A terminal stream's pacing, driven by hand: the dispatcher's releases are called directly
(its clock never runs), so each step is deterministic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2, shard_pb2

from services.feed.gateway.hub import INGEST_LAG, Hub, ShardLink
from services.feed.gateway.streams import STREAM_TICKS, Dispatcher, TerminalStream
from tests.gateway_fixtures import KEY, full_packet, hub_and_link, records


def _tick(hub: Hub, link: ShardLink, sequence: int) -> None:
    hub.apply(link, records(sequence, full_packet(100.0 + sequence, 1000 + sequence)))


def _stream() -> tuple[Hub, ShardLink, Dispatcher, TerminalStream]:
    hub, link = hub_and_link()
    dispatcher = Dispatcher(period=3600.0)  # its clock never fires here: releases are explicit
    stream = TerminalStream(hub, dispatcher, common_pb2.FEED_MODE_FULL, STREAM_TICKS)
    stream.add([KEY])
    return hub, link, dispatcher, stream


async def _started(stream: TerminalStream) -> tuple[AsyncGenerator[Any, None], asyncio.Task[Any]]:
    """The stream's generator, waiting for work, and the task awaiting its first message."""
    batches = stream.run()
    first = asyncio.create_task(anext(batches))
    await asyncio.sleep(0)
    return batches, first


async def test_a_released_stream_sends_what_is_pending() -> None:
    hub, link, dispatcher, stream = _stream()
    batches, first = await _started(stream)
    _tick(hub, link, 1)
    assert dispatcher.is_due(stream)
    for _ in range(5):  # loop iterations in which only a release could wake it
        await asyncio.sleep(0)
    assert not first.done(), "nothing may be sent before the clock releases the stream"
    assert stream.release(time.monotonic())
    assert isinstance(await asyncio.wait_for(first, 1.0), bytes)
    await batches.aclose()


async def test_a_stream_the_clock_found_writing_sends_as_soon_as_its_write_completes() -> None:
    hub, link, dispatcher, stream = _stream()
    batches, first = await _started(stream)
    _tick(hub, link, 1)
    stream.release(time.monotonic())
    await asyncio.wait_for(first, 1.0)
    # The generator is suspended in its yield: gRPC is still writing that batch.
    _tick(hub, link, 2)
    assert not stream.release(time.monotonic()), "a stream still writing is not released"
    # Without the missed release it would wait a whole period (an hour here) for the clock.
    second = await asyncio.wait_for(anext(batches), 1.0)
    assert isinstance(second, bytes) and not dispatcher.is_due(stream) and not stream.pending
    await batches.aclose()


async def test_streams_are_spread_over_the_slices_and_released_a_slice_at_a_time() -> None:
    hub, link = hub_and_link()
    dispatcher = Dispatcher(period=3600.0, slices=2)
    streams = [TerminalStream(hub, dispatcher, common_pb2.FEED_MODE_FULL, STREAM_TICKS) for _ in range(2)]
    for stream in streams:
        stream.add([KEY])
    generators, firsts = zip(*[await _started(stream) for stream in streams], strict=False)
    _tick(hub, link, 1)
    assert [len(slot) for slot in dispatcher.slices] == [1, 1]
    dispatcher.release(1, time.monotonic())
    done, _ = await asyncio.wait(firsts, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
    for _ in range(5):
        await asyncio.sleep(0)
    assert done == {firsts[1]} and not firsts[0].done(), "only the released slice's stream sends"
    dispatcher.release(0, time.monotonic())
    await asyncio.wait_for(firsts[0], 1.0)
    for generator in generators:
        await generator.aclose()


async def test_a_batch_says_when_it_was_sent() -> None:
    hub, link, _dispatcher, stream = _stream()
    batches, first = await _started(stream)
    _tick(hub, link, 1)
    before = time.time_ns()
    assert stream.release(time.monotonic())
    response = feed_pb2.StreamTicksResponse.FromString(await asyncio.wait_for(first, 1.0))
    assert [t.sequence for t in response.batch.ticks] == [1]
    assert before <= response.batch.sent_at.ToNanoseconds() <= time.time_ns()
    await batches.aclose()


def test_the_ingest_lag_of_every_shard_message_is_measured() -> None:
    hub, link = hub_and_link()
    count = _sample(INGEST_LAG, "_count")
    shard_received = int(time.time() * 1e6) - 30_000  # 30 ms ago
    blob = records(1, full_packet(), received_us=shard_received)
    hub._on_message(link, shard_pb2.StreamShardTicksResponse(packets=shard_pb2.RawPackets(records=blob, count=1)))
    assert _sample(INGEST_LAG, "_count") == count + 1
    assert hub.instruments[KEY].latest is not None
    assert _sample(INGEST_LAG, "_bucket", le="0.02") < _sample(INGEST_LAG, "_bucket", le="0.05"), "counted as ~30 ms"


def _sample(histogram: Any, suffix: str, **labels: str) -> float:
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith(suffix) and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no {suffix} sample")
