"""The gateway's fast Full-tick encoder against the general path (the protobuf message built
field by field): the same Tick for any Full packet, with or without a previous close, and
entries that join into a TickBatch every protobuf parser reads."""

from __future__ import annotations

import struct

from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.instruments import SEGMENTS_BY_WIRE_CODE
from services.common.keys import instrument_key, wire_key
from services.dhan import IST_OFFSET_SECONDS
from services.feed.gateway.encoding import FULL_PARTS, PART_PREV
from services.feed.gateway.hub import Instrument
from services.feed.gateway.streams import STREAM_TICKS
from services.feed.gateway.values import Value

FULL = struct.Struct("<BHBIfHIfIIIIIIffff" + "IIHHff" * 5)
PREV = struct.Struct("<BHBIfI")
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
fields = st.tuples(f32, u16, u32, f32, *[u32] * 6, *[f32] * 4, *[u32, u32, u16, u16, f32, f32] * 5)
security_ids = st.integers(1, 0xFFFF_FFFF)
segments = st.sampled_from(sorted(SEGMENTS_BY_WIRE_CODE))


def _value(
    segment: int,
    security_id: int,
    values: tuple[object, ...],
    prev: tuple[float, int] | None,
    sequence: int,
    received_us: int,
) -> Value:
    instrument = Instrument(instrument_key(segment, security_id))
    full = FULL.pack(8, 162, segment, security_id, *values)
    prev_packet = PREV.pack(6, 16, segment, security_id, *prev) if prev is not None else None
    return Value(instrument, sequence, received_us, full, None, prev_packet)


def _parsed(entry: bytes) -> feed_pb2.Tick:
    batch = feed_pb2.TickBatch.FromString(entry)
    assert len(batch.ticks) == 1
    return batch.ticks[0]


@settings(max_examples=300, deadline=None)
@given(
    segments,
    security_ids,
    fields,
    st.none() | st.tuples(f32, u32),
    st.integers(0, 2**64 - 1),
    st.integers(-(2**63), 2**63 - 1),
)
def test_fast_full_entry_is_the_general_tick(
    segment: int,
    security_id: int,
    values: tuple[object, ...],
    prev: tuple[float, int] | None,
    sequence: int,
    received_us: int,
) -> None:
    value = _value(segment, security_id, values, prev, sequence, received_us)
    fast = _parsed(value.entry(common_pb2.FEED_MODE_FULL))
    assert fast == value.message(common_pb2.FEED_MODE_FULL)
    assert fast.present_parts == FULL_PARTS | (PART_PREV if prev is not None else 0)
    assert len(fast.depth) == 5
    assert fast.last_trade_time_seconds == values[2] - IST_OFFSET_SECONDS  # type: ignore[operator]


def test_lower_modes_cut_the_tick_down() -> None:
    values = (101.5, 75, 1_790_000_000, 101.25, 5000, 40, 60, 900, 950, 850, 100.0, 99.0, 102.0, 98.5) + (
        10,
        20,
        1,
        2,
        101.0,
        102.0,
    ) * 5
    value = _value(2, 43210, values, (99.0, 800), 7, 1_790_000_000_000_000)
    quote = _parsed(value.entry(common_pb2.FEED_MODE_QUOTE))
    assert quote.volume == 5000 and quote.open_interest == 900 and not quote.depth and quote.day_high_open_interest == 0
    ticker = _parsed(value.entry(common_pb2.FEED_MODE_TICKER))
    assert ticker.last_price == 101.5 and ticker.volume == 0 and ticker.previous_close == 99.0
    assert ticker.key == common_pb2.InstrumentKey(
        exchange_segment=common_pb2.EXCHANGE_SEGMENT_NSE_FNO, security_id=43210
    )
    assert wire_key("NSE_FNO", 43210) == value.instrument.key


def test_entries_join_into_one_batch() -> None:
    values = (101.5, 75, 1_790_000_000, 101.25, 5000, 40, 60, 900, 950, 850, 100.0, 99.0, 102.0, 98.5) + (
        10,
        20,
        1,
        2,
        101.0,
        102.0,
    ) * 5
    entries = [
        _value(2, sid, values, None, sid, 0).entry(common_pb2.FEED_MODE_FULL) for sid in (1, 300, 70_000, 2**32 - 1)
    ]
    response = feed_pb2.StreamTicksResponse.FromString(STREAM_TICKS.batch(entries, 1_790_000_000_123_456_789))
    assert [t.key.security_id for t in response.batch.ticks] == [1, 300, 70_000, 2**32 - 1]
    assert [t.sequence for t in response.batch.ticks] == [1, 300, 70_000, 2**32 - 1]
    assert response.batch.sent_at.seconds == 1_790_000_000 and response.batch.sent_at.nanos == 123_456_789
