"""Encoding packets, server -> client (the simulator's side, and tests).

Encoders raise struct.error for ints out of their field's range and OverflowError for
floats beyond float32; floats are rounded to the nearest float32. The keyword encoders take
the last trade time as ``ltt_epoch`` (real UTC, what a simulator's clock gives) and write
Dhan's IST-based value; :func:`encode` (record) writes the record's raw ``ltt_ist`` as is.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from services.dhan.packets import (
    EMPTY_DEPTH,
    DisconnectPacket,
    FullPacket,
    OIPacket,
    Packet,
    PrevClosePacket,
    QuotePacket,
    TickerPacket,
)
from services.dhan.protocol import DEPTH_LEVELS, IST_OFFSET_SECONDS, PACKET_FORMATS, PACKET_SIZES, ResponseCode

__all__ = [
    "encode",
    "encode_disconnect",
    "encode_full",
    "encode_oi",
    "encode_prev_close",
    "encode_quote",
    "encode_ticker",
]


def _packer(code: ResponseCode) -> Callable[..., bytes]:
    """pack(segment, security id, *fields) of one packet kind: code and length filled in."""
    return partial(struct.Struct(PACKET_FORMATS[code]).pack, int(code), PACKET_SIZES[code])


_P_TICKER = _packer(ResponseCode.TICKER)
_P_QUOTE = _packer(ResponseCode.QUOTE)
_P_OI = _packer(ResponseCode.OI)
_P_PREV_CLOSE = _packer(ResponseCode.PREV_CLOSE)
_P_FULL = _packer(ResponseCode.FULL)
_P_DISCONNECT = _packer(ResponseCode.DISCONNECT)


def encode_ticker(segment: int, security_id: int, ltp: float, ltt_epoch: int) -> bytes:
    return _P_TICKER(segment, security_id, ltp, ltt_epoch + IST_OFFSET_SECONDS)


def encode_quote(
    segment: int,
    security_id: int,
    ltp: float,
    ltq: int,
    ltt_epoch: int,
    atp: float,
    volume: int,
    total_sell_qty: int,
    total_buy_qty: int,
    day_open: float,
    day_close: float,
    day_high: float,
    day_low: float,
) -> bytes:
    return _P_QUOTE(
        segment, security_id, ltp, ltq, ltt_epoch + IST_OFFSET_SECONDS, atp, volume,
        total_sell_qty, total_buy_qty, day_open, day_close, day_high, day_low,
    )  # fmt: skip


def encode_oi(segment: int, security_id: int, oi: int) -> bytes:
    return _P_OI(segment, security_id, oi)


def encode_prev_close(segment: int, security_id: int, prev_close: float, prev_oi: int) -> bytes:
    return _P_PREV_CLOSE(segment, security_id, prev_close, prev_oi)


def encode_full(
    segment: int,
    security_id: int,
    ltp: float,
    ltq: int,
    ltt_epoch: int,
    atp: float,
    volume: int,
    total_sell_qty: int,
    total_buy_qty: int,
    oi: int,
    day_high_oi: int,
    day_low_oi: int,
    day_open: float,
    day_close: float,
    day_high: float,
    day_low: float,
    depth: Sequence[Any] = EMPTY_DEPTH,
) -> bytes:
    """``depth``: five levels best first (DepthLevel or 6-sequences; EMPTY_LEVEL for empty
    ones), or the flat 30 values of FullPacket.depth."""
    if len(depth) == DEPTH_LEVELS:
        flat = [value for level in depth for value in level]
    elif len(depth) == len(EMPTY_DEPTH):
        flat = list(depth)
    else:
        raise ValueError(f"a Full packet has exactly 5 depth levels (or 30 flat values), got {len(depth)}")
    return _P_FULL(
        segment, security_id, ltp, ltq, ltt_epoch + IST_OFFSET_SECONDS, atp, volume,
        total_sell_qty, total_buy_qty, oi, day_high_oi, day_low_oi, day_open, day_close, day_high, day_low, *flat,
    )  # fmt: skip


def encode_disconnect(reason: int, segment: int = 0, security_id: int = 0) -> bytes:
    return _P_DISCONNECT(segment, security_id, reason)


# A record holds its packet's fields in wire order (raw LTT, flat depth), as the packers take them.
_PACKERS: dict[type, Callable[..., bytes]] = {
    TickerPacket: _P_TICKER,
    QuotePacket: _P_QUOTE,
    OIPacket: _P_OI,
    PrevClosePacket: _P_PREV_CLOSE,
    FullPacket: _P_FULL,
    DisconnectPacket: _P_DISCONNECT,
}


def encode(packet: Packet) -> bytes:
    """The exact bytes of one packet; decode_frame(encode(p)) == [p] for float32 values."""
    try:
        pack = _PACKERS[type(packet)]
    except KeyError:
        raise TypeError(f"not a packet record: {type(packet).__name__}") from None
    return pack(*packet)
