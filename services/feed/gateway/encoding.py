"""A gateway value as protobuf bytes: one `ticks` entry of a TickBatch or TickSnapshot
(field 1 of both), ready to be joined with others into a batch.

Full packets streamed in FULL mode, the bulk of the traffic, take the fast path: every
Tick field is fixed-width (see feed.proto), so the entry is the raw packet unpacked once
and packed once with constant tags, a fraction of the cost of building the message.
Everything else (Ticker and Quote packets, lower modes) builds the message. Both give the
same Tick; the tests check it. Both round every price (services.feed.gateway.prices): the
decoded records keep Dhan's float32 values as sent, and terminals get the decimals.
"""

from __future__ import annotations

import struct
from typing import Any

from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2

from services.dhan.packets import FullPacket, OIPacket, PrevClosePacket, QuotePacket, TickerPacket
from services.dhan.protocol import FULL_FIELDS, HEADER_SIZE, IST_OFFSET_SECONDS, PREV_CLOSE_FIELDS
from services.feed.gateway.prices import ROUNDING, SCALES, rounded

TICKER, FULL = common_pb2.FEED_MODE_TICKER, common_pb2.FEED_MODE_FULL
PART_TICKER, PART_QUOTE, PART_OI, PART_PREV, PART_FULL = (
    feed_pb2.TICK_PART_TICKER, feed_pb2.TICK_PART_QUOTE, feed_pb2.TICK_PART_OI,
    feed_pb2.TICK_PART_PREV_CLOSE, feed_pb2.TICK_PART_FULL,
)  # fmt: skip
FULL_PARTS = PART_TICKER | PART_QUOTE | PART_OI | PART_FULL
TickPacket = TickerPacket | QuotePacket | FullPacket

# A packet after its header: t[i] in full_entry is FullPacket's field i + 2 (no segment, no id).
_FULL_BODY = struct.Struct(f"<{HEADER_SIZE}x{FULL_FIELDS}")
_PREV_BODY = struct.Struct(f"<{HEADER_SIZE}x{PREV_CLOSE_FIELDS}")  # previous close, previous OI
# Tick after its key, every field as (tag, value); tags of fields 16+ take two bytes (H).
_DEPTH_LEVEL = "BB" + "BdBqBiBdBqBi"  # field 12 with length 46, then DepthLevel fields 1-6
_FULL_TICK = struct.Struct("<BQBIBdBqBqBdBqBqBqBq" + _DEPTH_LEVEL * 5 + "BqBdBd" + "HdHdHqHqHdHq")


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key_field(key: common_pb2.InstrumentKey) -> bytes:
    """Tick.key as bytes, tag included (an instrument's is computed once)."""
    body = key.SerializeToString()
    return b"\x0a" + varint(len(body)) + body


def full_entry_prefix(key_bytes: bytes) -> bytes:
    """The entry tag and length of an instrument's fast-path ticks, which all have one size."""
    return b"\x0a" + varint(len(key_bytes) + _FULL_TICK.size) + key_bytes


def full_entry(
    prefix: bytes,
    sequence: int,
    received_us: int,
    full: bytes,
    prev: bytes | None,
    _unpack: Any = _FULL_BODY.unpack_from,
    _pack: Any = _FULL_TICK.pack,
    _ist: int = IST_OFFSET_SECONDS,
    _scales: tuple[float, ...] = SCALES,
    _r: float = ROUNDING,
) -> bytes:
    """The fast path: a Full packet (and the previous-close packet, if any) in FULL mode.
    Every price is prices.rounded, written inline: a call per price would cost more than
    the rounding itself."""
    t = _unpack(full)
    s = _scales[full[3]]
    if prev is None:
        parts, prev_close, prev_oi = FULL_PARTS, 0.0, 0
    else:
        parts = FULL_PARTS | PART_PREV
        prev_close, prev_oi = _PREV_BODY.unpack_from(prev)
        prev_close = (prev_close * s + _r - _r) / s
    # Depth levels are written in DepthLevel field order: bid price 1, bid qty 2, bid orders
    # 3, ask price 4, ask qty 5, ask orders 6.
    return prefix + _pack(
        0x11, sequence, 0x1D, parts, 0x21, (t[0] * s + _r - _r) / s, 0x29, t[2] - _ist, 0x31, t[1],
        0x39, (t[3] * s + _r - _r) / s, 0x41, t[4], 0x49, t[6], 0x51, t[5], 0x59, t[7],
        0x62, 46, 0x09, (t[18] * s + _r - _r) / s, 0x11, t[14], 0x1D, t[16],
        0x21, (t[19] * s + _r - _r) / s, 0x29, t[15], 0x35, t[17],
        0x62, 46, 0x09, (t[24] * s + _r - _r) / s, 0x11, t[20], 0x1D, t[22],
        0x21, (t[25] * s + _r - _r) / s, 0x29, t[21], 0x35, t[23],
        0x62, 46, 0x09, (t[30] * s + _r - _r) / s, 0x11, t[26], 0x1D, t[28],
        0x21, (t[31] * s + _r - _r) / s, 0x29, t[27], 0x35, t[29],
        0x62, 46, 0x09, (t[36] * s + _r - _r) / s, 0x11, t[32], 0x1D, t[34],
        0x21, (t[37] * s + _r - _r) / s, 0x29, t[33], 0x35, t[35],
        0x62, 46, 0x09, (t[42] * s + _r - _r) / s, 0x11, t[38], 0x1D, t[40],
        0x21, (t[43] * s + _r - _r) / s, 0x29, t[39], 0x35, t[41],
        0x69, received_us, 0x71, (t[10] * s + _r - _r) / s, 0x79, (t[12] * s + _r - _r) / s,
        0x0181, (t[13] * s + _r - _r) / s, 0x0189, (t[11] * s + _r - _r) / s, 0x0191, t[8], 0x0199, t[9],
        0x01A1, prev_close, 0x01A9, prev_oi,
    )  # fmt: skip


def build_tick(
    key: common_pb2.InstrumentKey,
    sequence: int,
    received_us: int,
    mode: int,
    tick: TickPacket | None,
    oi: OIPacket | None,
    prev: PrevClosePacket | None,
) -> feed_pb2.Tick:
    """The general path: the Tick as a terminal in `mode` sees it (higher modes carry more),
    every price rounded (prices.rounded)."""
    message = feed_pb2.Tick(key=key, sequence=sequence, receive_time_micros=received_us)
    parts = 0
    if tick is not None:
        parts |= PART_TICKER
        scale = SCALES[tick.segment]
        message.last_price = rounded(tick.ltp, scale)
        message.last_trade_time_seconds = tick.ltt_epoch
        if mode != TICKER and isinstance(tick, QuotePacket | FullPacket):
            parts |= PART_QUOTE
            message.last_trade_quantity = tick.ltq
            message.average_price = rounded(tick.atp, scale)
            message.volume = tick.volume
            message.total_buy_quantity = tick.total_buy_qty
            message.total_sell_quantity = tick.total_sell_qty
            message.day_open = rounded(tick.day_open, scale)
            message.day_high = rounded(tick.day_high, scale)
            message.day_low = rounded(tick.day_low, scale)
            message.day_close = rounded(tick.day_close, scale)
            if type(tick) is FullPacket:
                parts |= PART_OI
                message.open_interest = tick.oi
                if mode == FULL:
                    parts |= PART_FULL
                    message.day_high_open_interest = tick.day_high_oi
                    message.day_low_open_interest = tick.day_low_oi
                    depth = tick.depth  # flat: (bid_qty, ask_qty, bid_orders, ask_orders, bid_price, ask_price) x 5
                    add = message.depth.add
                    for k in (0, 6, 12, 18, 24):
                        add(
                            bid_price=rounded(depth[k + 4], scale),
                            bid_quantity=depth[k],
                            bid_orders=depth[k + 2],
                            ask_price=rounded(depth[k + 5], scale),
                            ask_quantity=depth[k + 1],
                            ask_orders=depth[k + 3],
                        )
    if oi is not None and mode != TICKER and not parts & PART_OI:
        parts |= PART_OI
        message.open_interest = oi.oi
    if prev is not None:
        parts |= PART_PREV
        message.previous_close = rounded(prev.prev_close, SCALES[prev.segment])
        message.previous_open_interest = prev.prev_oi
    message.present_parts = parts
    return message


def entry(tick_bytes: bytes) -> bytes:
    """A serialised Tick as a `ticks` entry."""
    return b"\x0a" + varint(len(tick_bytes)) + tick_bytes
