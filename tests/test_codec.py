"""Property tests of the Dhan v2 feed codec (services/dhan/): round trips, frame
splitting, protocol errors that never raise, request building and validation, LTT base."""

from __future__ import annotations

import calendar
import json
import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services import dhan as codec
from services.common.instruments import SEGMENT_WIRE_CODES
from services.dhan import (
    EMPTY_DEPTH,
    IST_OFFSET_SECONDS,
    PACKET_SIZES,
    DepthLevel,
    DisconnectPacket,
    FeedMode,
    FullPacket,
    OIPacket,
    PrevClosePacket,
    ProtocolErrors,
    QuotePacket,
    Request,
    RequestCode,
    RequestError,
    TickerPacket,
    build_disconnect,
    build_subscribe_messages,
    build_unsubscribe_messages,
    decode_frame,
    depth_levels,
    encode,
    parse_request,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# Records hold the wire's raw values: ltt_ist is the wire's uint32, the depth is flat.
ltt_ist = u32
level = (u32, u32, u16, u16, f32, f32)  # bid_qty, ask_qty, bid_orders, ask_orders, bid_price, ask_price

tickers = st.builds(TickerPacket, u8, u32, f32, ltt_ist)
quotes = st.builds(QuotePacket, u8, u32, f32, u16, ltt_ist, f32, u32, u32, u32, f32, f32, f32, f32)
ois = st.builds(OIPacket, u8, u32, u32)
prev_closes = st.builds(PrevClosePacket, u8, u32, f32, u32)
fulls = st.builds(
    FullPacket, u8, u32, f32, u16, ltt_ist, f32, u32, u32, u32, u32, u32, u32, f32, f32, f32, f32, *level * 5,
)  # fmt: skip
disconnects = st.builds(DisconnectPacket, u8, u32, u16)
packets = st.one_of(tickers, quotes, ois, prev_closes, fulls, disconnects)

CODE_OF = {TickerPacket: 2, QuotePacket: 4, OIPacket: 5, PrevClosePacket: 6, FullPacket: 8, DisconnectPacket: 50}


def _decode(frame: bytes | bytearray | memoryview) -> tuple[list[codec.Packet], ProtocolErrors]:
    errors = ProtocolErrors()
    return decode_frame(frame, errors), errors


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", [tickers, quotes, ois, prev_closes, fulls, disconnects], ids=lambda s: repr(s)[:40])
def test_round_trip_every_kind(kind: st.SearchStrategy[codec.Packet]) -> None:
    @given(kind)
    def check(packet: codec.Packet) -> None:
        data = encode(packet)
        assert data[0] == CODE_OF[type(packet)]
        assert len(data) == PACKET_SIZES[data[0]] == struct.unpack_from("<H", data, 1)[0]
        assert data[3] == packet.segment and struct.unpack_from("<I", data, 4)[0] == packet.security_id
        # Fast path (bytes), general path (memoryview, bytearray) and every record type.
        for frame in (data, memoryview(data), bytearray(data)):
            decoded, errors = _decode(frame)
            assert decoded == [packet]
            assert type(decoded[0]) is type(packet)
            assert errors.malformed == 0 and not errors.skipped

    check()


def _keywords(packet: TickerPacket | QuotePacket | FullPacket) -> dict[str, object]:
    """The record's fields as the keyword encoders take them: the LTT as UTC ltt_epoch, a
    Full packet's depth as one flat sequence."""
    fields: dict[str, object] = dict(
        zip(packet._fields[:16], packet, strict=False)
    )  # a Full packet's scalars, others whole
    del fields["ltt_ist"]
    if isinstance(packet, FullPacket):
        fields["depth"] = packet.depth
    return {**fields, "ltt_epoch": packet.ltt_epoch}


@given(st.one_of(tickers, quotes, fulls))
def test_keyword_encoders_match_encode(packet: TickerPacket | QuotePacket | FullPacket) -> None:
    """The keyword encoders (UTC ltt_epoch) write the same bytes as encode(record) (raw
    ltt_ist): ltt_epoch is ltt_ist - 19800 both ways."""
    assert packet.ltt_epoch == packet.ltt_ist - IST_OFFSET_SECONDS
    encoder = {TickerPacket: codec.encode_ticker, QuotePacket: codec.encode_quote, FullPacket: codec.encode_full}[
        type(packet)
    ]
    assert encoder(**_keywords(packet)) == encode(packet)  # type: ignore[operator]


@given(fulls)
def test_full_depth_fields_are_the_flat_depth_best_first(packet: FullPacket) -> None:
    assert packet.depth == tuple(packet)[16:] and type(packet.depth) is tuple and len(packet.depth) == 30
    for k, depth_level in enumerate(depth_levels(packet.depth), start=1):
        assert depth_level == DepthLevel(*(getattr(packet, f"{name}_{k}") for name in DepthLevel._fields))
    assert codec.encode_full(**_keywords(packet) | {"depth": depth_levels(packet.depth)}) == encode(packet)  # type: ignore[arg-type]


def test_layout_matches_reference_offsets() -> None:
    """Bytes written at the offsets of the reference table, independently of codec's structs."""
    raw_ltt = 1_790_000_000
    full = bytearray(162)
    struct.pack_into("<BHBI", full, 0, 8, 162, 2, 44430)
    struct.pack_into("<f", full, 8, 101.25)  # LTP
    struct.pack_into("<H", full, 12, 65)  # LTQ
    struct.pack_into("<I", full, 14, raw_ltt)  # LTT
    struct.pack_into("<f", full, 18, 100.5)  # ATP
    for offset, value in zip((22, 26, 30, 34, 38, 42), (1000, 2000, 3000, 4000, 5000, 3500), strict=False):
        struct.pack_into("<I", full, offset, value)  # volume, sell, buy, OI, OI high, OI low
    for offset, price in zip((46, 50, 54, 58), (99.0, 98.0, 105.0, 95.0), strict=True):
        struct.pack_into("<f", full, offset, price)  # open, close, high, low
    for k in range(5):
        struct.pack_into("<IIHHff", full, 62 + 20 * k, 10 + k, 20 + k, 1 + k, 2 + k, 101.0 - k, 101.5 + k)
    depth: tuple[Any, ...] = tuple(v for k in range(5) for v in (10 + k, 20 + k, 1 + k, 2 + k, 101.0 - k, 101.5 + k))
    expected = FullPacket(
        2, 44430, 101.25, 65, raw_ltt, 100.5, 1000, 2000, 3000, 4000, 5000, 3500, 99.0, 98.0, 105.0, 95.0, *depth,
    )  # fmt: skip
    assert _decode(bytes(full))[0] == [expected]
    assert encode(expected) == bytes(full)
    assert expected.ltt_epoch == raw_ltt - 19800 and expected.depth == depth
    assert (expected.bid_qty_1, expected.ask_price_1, expected.bid_orders_5, expected.ask_price_5) == (
        10,
        101.5,
        5,
        105.5,
    )

    quote = bytearray(50)
    struct.pack_into("<BHBI", quote, 0, 4, 50, 1, 1333)
    struct.pack_into("<fHIfIII", quote, 8, 1.5, 7, raw_ltt, 1.25, 11, 12, 13)
    struct.pack_into("<ffff", quote, 34, 1.0, 2.0, 3.0, 0.5)
    expected_quote = QuotePacket(1, 1333, 1.5, 7, raw_ltt, 1.25, 11, 12, 13, 1.0, 2.0, 3.0, 0.5)
    assert _decode(bytes(quote))[0] == [expected_quote]
    assert encode(expected_quote) == bytes(quote)

    assert encode(TickerPacket(0, 13, 2.5, raw_ltt)) == struct.pack("<BHBIfI", 2, 16, 0, 13, 2.5, raw_ltt)
    assert encode(OIPacket(2, 9, 77)) == struct.pack("<BHBII", 5, 12, 2, 9, 77)
    assert encode(PrevClosePacket(0, 13, 2.5, 88)) == struct.pack("<BHBIfI", 6, 16, 0, 13, 2.5, 88)
    assert codec.encode_disconnect(805) == struct.pack("<BHBIH", 50, 10, 0, 0, 805)


def test_records_of_different_kinds_are_never_equal() -> None:
    # Same tuple contents: a plain NamedTuple would compare equal.
    assert TickerPacket(1, 2, 3.0, 4) != PrevClosePacket(1, 2, 3.0, 4)
    assert TickerPacket(1, 2, 3.0, 4) != PrevClosePacket(1, 2, 3.0, 4)
    assert TickerPacket(1, 2, 3.0, 4) == TickerPacket(1, 2, 3.0, 4)
    assert hash(TickerPacket(1, 2, 3.0, 4)) == hash(TickerPacket(1, 2, 3.0, 4))
    assert TickerPacket(1, 2, 3.0, 4) != (1, 2, 3.0, 4)


def test_encoders_reject_bad_values() -> None:
    with pytest.raises(struct.error):
        codec.encode_oi(1, 2**32, 0)
    with pytest.raises(struct.error):
        codec.encode_quote(1, 2, 1.0, 70_000, 0, 1.0, 0, 0, 0, 1.0, 1.0, 1.0, 1.0)  # LTQ is u16
    with pytest.raises(ValueError):
        codec.encode_full(1, 2, 1.0, 1, 0, 1.0, 0, 0, 0, 0, 0, 0, 1.0, 1.0, 1.0, 1.0, EMPTY_DEPTH[:4])
    with pytest.raises(TypeError):
        encode((1, 2, 3.0, 4))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- frames


@given(st.lists(packets, min_size=2, max_size=8))
def test_concatenated_packets_decode_in_order(items: list[codec.Packet]) -> None:
    frame = b"".join(encode(p) for p in items)
    decoded, errors = _decode(frame)
    assert decoded == items
    assert [type(p) for p in decoded] == [type(p) for p in items]
    assert errors.malformed == 0


@given(packets, packets)
def test_skipped_codes_1_and_7_are_counted(first: codec.Packet, last: codec.Packet) -> None:
    index_packet = struct.pack("<BHBI", 1, 28, 0, 13) + bytes(20)  # layout undocumented
    status_packet = struct.pack("<BHBI", 7, 8, 0, 0)
    frame = encode(first) + index_packet + status_packet + status_packet + encode(last)
    decoded, errors = _decode(frame)
    assert decoded == [first, last]
    assert errors.skipped[1] == 1 and errors.skipped[7] == 2
    assert errors.malformed == 0 and errors.last_error is None
    # Alone in a frame too.
    decoded, errors = _decode(status_packet)
    assert decoded == [] and errors.skipped[7] == 1 and errors.malformed == 0


@given(st.binary(max_size=400))
@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_never_raise(data: bytes) -> None:
    for frame in (data, memoryview(data), bytearray(data)):
        decoded, errors = _decode(frame)
        assert all(type(p) in CODE_OF for p in decoded)
        if errors.malformed == 0:
            # Fully consumed by valid packets and skipped ones.
            assert errors.last_error is None
            if not errors.skipped:
                assert sum(PACKET_SIZES[CODE_OF[type(p)]] for p in decoded) == len(data)
        else:
            assert errors.last_error


@given(st.lists(packets, min_size=1, max_size=4), st.data())
def test_truncated_frames_decode_the_whole_packets_and_count_one_error(
    items: list[codec.Packet], data: st.DataObject
) -> None:
    frame = b"".join(encode(p) for p in items)
    cut = data.draw(st.integers(1, len(frame) - 1))
    ends = [sum(len(encode(p)) for p in items[: i + 1]) for i in range(len(items))]
    whole = [p for p, end in zip(items, ends, strict=False) if end <= cut]
    decoded, errors = _decode(frame[:cut])
    assert decoded == whole
    assert errors.malformed == (0 if cut in ends else 1)
    if errors.malformed:
        assert "truncated" in (errors.last_error or "")


@given(packets)
def test_every_truncation_of_a_packet_is_one_error(packet: codec.Packet) -> None:
    data = encode(packet)
    errors = ProtocolErrors()
    for cut in range(1, len(data)):
        assert decode_frame(data[:cut], errors) == []
        assert decode_frame(memoryview(data)[:cut], errors) == []
    assert errors.malformed == 2 * (len(data) - 1)


def test_empty_frame_is_nothing() -> None:
    decoded, errors = _decode(b"")
    assert decoded == [] and errors.malformed == 0


def test_bad_length_fields() -> None:
    good = encode(OIPacket(1, 2, 3))

    # Length not matching the code's fixed size, but delimiting: counted, then resynchronised.
    wrong = bytearray(encode(TickerPacket(1, 2, 3.0, 4)) + bytes(4))
    struct.pack_into("<H", wrong, 1, 20)
    decoded, errors = _decode(bytes(wrong) + good)
    assert decoded == [OIPacket(1, 2, 3)]
    assert errors.malformed == 1 and "expected 16" in (errors.last_error or "")

    # Shorter than a header: nothing after it can be trusted.
    tiny = bytearray(encode(TickerPacket(1, 2, 3.0, 4)))
    struct.pack_into("<H", tiny, 1, 3)
    decoded, errors = _decode(good + bytes(tiny) + good)
    assert decoded == [OIPacket(1, 2, 3)]
    assert errors.malformed == 1 and "shorter than the header" in (errors.last_error or "")

    # Longer than the frame.
    long = bytearray(encode(TickerPacket(1, 2, 3.0, 4)))
    struct.pack_into("<H", long, 1, 400)
    decoded, errors = _decode(bytes(long))
    assert decoded == [] and errors.malformed == 1 and "truncated" in (errors.last_error or "")

    # Zero length (would loop forever if taken at face value).
    zero = bytearray(good)
    struct.pack_into("<H", zero, 1, 0)
    decoded, errors = _decode(bytes(zero))
    assert decoded == [] and errors.malformed == 1


@pytest.mark.parametrize("code", [0, 3, 9, 41, 51, 255])
def test_unknown_codes_are_counted_and_skipped_by_length(code: int) -> None:
    unknown = struct.pack("<BHBI", code, 12, 1, 1) + bytes(4)
    after = encode(PrevClosePacket(0, 13, 24000.5, 0))
    decoded, errors = _decode(unknown + after)
    assert decoded == [PrevClosePacket(0, 13, 24000.5, 0)]
    assert errors.malformed == 1 and f"unknown response code {code}" in (errors.last_error or "")


def test_errors_accumulate_across_frames() -> None:
    errors = ProtocolErrors()
    for _ in range(3):
        decode_frame(b"\x63\x08\x00\x00\x00\x00\x00\x00", errors)
    decode_frame(b"\x07\x08\x00\x00\x00\x00\x00\x00", errors)
    assert errors.malformed == 3 and errors.skipped == {7: 1}
    assert "malformed=3" in repr(errors)


# --------------------------------------------------------------------------- LTT


def test_ltt_is_converted_from_the_ist_epoch() -> None:
    ist_based = calendar.timegm((2026, 11, 20, 9, 15, 0))  # 09:15:00 IST counted as if it were UTC
    utc = calendar.timegm((2026, 11, 20, 3, 45, 0))
    assert utc == int(datetime(2026, 11, 20, 3, 45, tzinfo=UTC).timestamp())
    frame = struct.pack("<BHBIfI", 2, 16, 1, 1333, 1500.5, ist_based)
    (packet,), _ = _decode(frame)
    assert isinstance(packet, TickerPacket) and packet.ltt_epoch == utc and packet.ltt_ist == ist_based
    quote = struct.pack("<BHBIfHIfIIIffff", 4, 50, 1, 1333, 1.0, 1, ist_based, 1.0, 1, 1, 1, 1.0, 1.0, 1.0, 1.0)
    assert _decode(quote)[0][0].ltt_epoch == utc  # type: ignore[union-attr]
    full = codec.encode_full(1, 1333, 1.0, 1, utc, 1.0, 1, 1, 1, 1, 1, 1, 1.0, 1.0, 1.0, 1.0)
    assert struct.unpack_from("<I", full, 14) == (ist_based,)
    assert codec.decode_packet(full, ProtocolErrors()).ltt_epoch == utc  # type: ignore[union-attr]
    assert codec.encode_ticker(1, 1333, 1500.5, utc) == frame


# --------------------------------------------------------------------------- requests

SEGMENTS = list(SEGMENT_WIRE_CODES)


def test_feed_modes_and_codes() -> None:
    assert [(m.subscribe_code, m.unsubscribe_code) for m in FeedMode] == [(15, 16), (17, 18), (21, 22)]
    assert RequestCode.DISCONNECT == 12 and RequestCode.SUBSCRIBE_DEPTH == 23
    assert json.loads(build_disconnect()) == {"RequestCode": 12}
    assert parse_request(build_disconnect()) == Request(RequestCode.DISCONNECT, [])


def test_250_instruments_make_three_messages() -> None:
    instruments = [(SEGMENTS[i % len(SEGMENTS)], 1000 + i) for i in range(250)]
    for builder, code_of in (
        (build_subscribe_messages, "subscribe_code"),
        (build_unsubscribe_messages, "unsubscribe_code"),
    ):
        for mode in FeedMode:
            messages = builder(instruments, mode)
            assert len(messages) == 3
            parsed = [json.loads(m) for m in messages]
            assert [p["InstrumentCount"] for p in parsed] == [100, 100, 50]
            assert [len(p["InstrumentList"]) for p in parsed] == [100, 100, 50]
            expected_code = getattr(mode, code_of)
            assert all(p["RequestCode"] == expected_code for p in parsed)
            entries = [e for p in parsed for e in p["InstrumentList"]]
            assert all(isinstance(e["SecurityId"], str) for e in entries)
            assert [(e["ExchangeSegment"], int(e["SecurityId"])) for e in entries] == instruments
            # The simulator's parser accepts what the builder produces.
            requests = [parse_request(m) for m in messages]
            assert [r.instruments for r in requests] == [instruments[:100], instruments[100:200], instruments[200:]]
            assert all(r.code == expected_code for r in requests)


@given(st.lists(st.tuples(st.sampled_from(SEGMENTS), u32), max_size=350), st.sampled_from(list(FeedMode)))
def test_builder_parser_round_trip(instruments: list[tuple[str, int]], mode: FeedMode) -> None:
    messages = build_subscribe_messages(iter(instruments), mode)
    assert len(messages) == -(-len(instruments) // 100)
    assert [i for m in messages for i in parse_request(m).instruments] == instruments


def test_builders_reject_bad_instruments() -> None:
    with pytest.raises(ValueError, match="unknown exchange segment"):
        build_subscribe_messages([("NSE", 1)], FeedMode.TICKER)
    with pytest.raises(ValueError, match="uint32"):
        build_subscribe_messages([("NSE_EQ", -1)], FeedMode.TICKER)
    with pytest.raises(TypeError):
        build_subscribe_messages([("NSE_EQ", "1333")], FeedMode.TICKER)  # type: ignore[list-item]
    assert build_subscribe_messages([], FeedMode.FULL) == []


def _message(code: int = 15, entries: list[object] | None = None, count: int | None = None) -> str:
    entries = [{"ExchangeSegment": "NSE_EQ", "SecurityId": "1333"}] if entries is None else entries
    return json.dumps(
        {"RequestCode": code, "InstrumentCount": len(entries) if count is None else count, "InstrumentList": entries}
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[15]", "JSON object"),
        ('{"InstrumentCount": 1}', "no RequestCode"),
        ('{"RequestCode": "15"}', "must be an integer"),
        ('{"RequestCode": true}', "must be an integer"),
        ('{"RequestCode": 99}', "not accepted"),
        ('{"RequestCode": 11}', "not accepted"),
        ('{"RequestCode": 23, "InstrumentCount": 1, "InstrumentList": []}', "not accepted"),
        ('{"RequestCode": 15, "InstrumentCount": 1}', "needs InstrumentList"),
        ('{"RequestCode": 15, "InstrumentList": []}', "needs InstrumentCount"),
        ('{"RequestCode": 15, "InstrumentCount": "1", "InstrumentList": []}', "InstrumentCount must be an integer"),
        ('{"RequestCode": 15, "InstrumentCount": 1, "InstrumentList": {}}', "must be a list"),
        (_message(entries=[]), "empty"),
        (_message(count=2), "does not match"),
        (_message(entries=[{"ExchangeSegment": "NSE_EQ", "SecurityId": str(i)} for i in range(101)]), "at most 100"),
        (_message(entries=[{"ExchangeSegment": "NSE", "SecurityId": "1"}]), "unknown ExchangeSegment"),
        (_message(entries=[{"ExchangeSegment": 1, "SecurityId": "1"}]), "unknown ExchangeSegment"),
        (_message(entries=[{"ExchangeSegment": "NSE_EQ", "SecurityId": 1333}]), "JSON string"),
        (_message(entries=[{"ExchangeSegment": "NSE_EQ", "SecurityId": "13a"}]), "decimal uint32"),
        (_message(entries=[{"ExchangeSegment": "NSE_EQ", "SecurityId": "-1"}]), "decimal uint32"),
        (_message(entries=[{"ExchangeSegment": "NSE_EQ", "SecurityId": str(2**32)}]), "decimal uint32"),
        (_message(entries=[{"ExchangeSegment": "NSE_EQ"}]), "needs ExchangeSegment and SecurityId"),
        (_message(entries=["NSE_EQ:1333"]), "must be an object"),
    ],
)
def test_parse_request_rejects(text: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_request(text)


def test_parse_request_accepts_the_reference_example_and_depth_when_allowed() -> None:
    example = (
        '{"RequestCode": 15, "InstrumentCount": 2, "InstrumentList": [{"ExchangeSegment": "NSE_EQ", '
        '"SecurityId": "1333"}, {"ExchangeSegment": "IDX_I", "SecurityId": "13"}]}'
    )
    assert parse_request(example) == Request(RequestCode.SUBSCRIBE_TICKER, [("NSE_EQ", 1333), ("IDX_I", 13)])
    depth = _message(code=23)
    assert parse_request(depth, allowed=[23, 24]).code is RequestCode.SUBSCRIBE_DEPTH
    hundred = _message(entries=[{"ExchangeSegment": "NSE_FNO", "SecurityId": str(i)} for i in range(100)])
    assert len(parse_request(hundred).instruments) == 100


@given(packets)
def test_decode_packet_agrees_with_decode_frame(packet: codec.Packet) -> None:
    errors = codec.ProtocolErrors()
    assert codec.decode_packet(encode(packet), errors) == codec.decode_frame(encode(packet), errors)[0]


def test_decode_packet_rejects_what_is_not_one_packet() -> None:
    errors = codec.ProtocolErrors()
    assert codec.decode_packet(b"\x08\xa2", errors) is None and errors.malformed == 1
