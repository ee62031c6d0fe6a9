"""What a shard queues for a gateway: read bursts the gateway has not taken yet leave as one
message, in order, so a gateway that fell behind catches up in a few reads."""

from __future__ import annotations

import asyncio

from dataserver.feed.v1 import shard_pb2

from services.feed.shard.runtime import BEHIND_LIMIT_SECONDS, MERGE_BYTES, GatewayStream, Overflow, Records


def _message(stream: GatewayStream) -> shard_pb2.StreamShardTicksResponse:
    message = stream.take()
    assert isinstance(message, shard_pb2.StreamShardTicksResponse), message
    return message


def _records(n: int, size: int = 178) -> Records:
    return Records(bytes([n % 256]) * size, 1, n)


async def test_consecutive_bursts_leave_as_one_message_in_order() -> None:
    stream = GatewayStream()
    for n in range(1, 4):
        stream.offer(_records(n))
    assert stream.ready.is_set()
    message = stream.take()
    assert isinstance(message, shard_pb2.StreamShardTicksResponse)
    assert message.packets.records == b"\x01" * 178 + b"\x02" * 178 + b"\x03" * 178
    assert message.packets.count == 3
    assert message.shard_sequence == 3  # the last burst's
    assert stream.take() is None and not stream.ready.is_set()


async def test_other_messages_keep_their_place_between_bursts() -> None:
    stream = GatewayStream()
    change = shard_pb2.StreamShardTicksResponse(
        instruments_change=shard_pb2.ShardInstrumentsChange(assignment_version=7)
    )
    stream.offer(_records(1))
    stream.offer(_records(2))
    stream.offer(change)
    stream.offer(_records(3))
    first, second, third = _message(stream), stream.take(), _message(stream)
    assert first.packets.count == 2
    assert second is change
    assert third.packets.records == b"\x03" * 178
    assert stream.take() is None


async def test_a_merged_message_stays_under_the_size_cap() -> None:
    stream = GatewayStream()
    burst = MERGE_BYTES // 3 + 1
    for n in range(4):
        stream.offer(_records(n, burst))
    sizes = []
    while stream.queue:
        sizes.append(len(_message(stream).packets.records))
    assert sizes == [2 * burst, 2 * burst]


async def test_a_gateway_that_falls_too_far_behind_is_cut_off_once() -> None:
    now = [0.0]
    stream = GatewayStream(clock=lambda: now[0])
    for n in range(1000):  # however many bursts, as long as the oldest is recent enough
        stream.offer(_records(n))
        now[0] += BEHIND_LIMIT_SECONDS / 1000
    assert not stream.overflowed
    stream.take()  # the gateway takes everything queued so far, as one message
    stream.offer(_records(1000))
    now[0] += BEHIND_LIMIT_SECONDS + 0.1
    stream.offer(_records(1001))
    stream.offer(_records(1002))
    assert stream.overflowed
    assert [m for _, m in stream.queue][-1] is Overflow and len(stream.queue) == 2
    assert stream.take().packets.count == 1
    assert stream.take() is Overflow


async def test_an_offer_wakes_a_waiting_sender() -> None:
    stream = GatewayStream()
    assert stream.take() is None
    waiter = asyncio.create_task(stream.ready.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    stream.offer(_records(1))
    await asyncio.wait_for(waiter, 1.0)
