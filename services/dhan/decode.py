"""Decoding server -> client frames into packet records (the shards' and the gateway's side).

This is on the hot path (every tick of five 5,000-instrument connections goes through
:func:`decode_frame`), so a packet is one ``Struct.unpack`` retyped as its record (see
``packets``), and the common case, exactly one packet of a known kind filling the frame, is
a dictionary look-up and one call, or inline for Full, Quote and Ticker.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from services.dhan.packets import (
    DisconnectPacket,
    FullPacket,
    OIPacket,
    Packet,
    PrevClosePacket,
    QuotePacket,
    TickerPacket,
)
from services.dhan.protocol import (
    DISCONNECT_CODE,
    FULL_CODE,
    FULL_SIZE,
    HEADER_SIZE,
    LENGTH_SHIFT,
    PACKET_SIZES,
    QUOTE_CODE,
    QUOTE_SIZE,
    RECORD_FORMATS,
    SKIPPED_CODES,
    TICKER_CODE,
    TICKER_SIZE,
    ResponseCode,
)

__all__ = ["ProtocolErrors", "decode_frame", "decode_packet", "disconnect_reason"]


class ProtocolErrors:
    """Counters a connection keeps across frames. ``malformed`` counts rejected packets or
    frame tails (unknown code, bad length, truncation); ``skipped`` counts recognised but
    undecoded packets by code (1 index, 7 market status); ``last_error`` describes the
    latest malformed one."""

    __slots__ = ("last_error", "malformed", "skipped")

    def __init__(self) -> None:
        self.malformed = 0
        self.last_error: str | None = None
        self.skipped: Counter[int] = Counter()

    def add(self, text: str) -> None:
        """Counts one malformed packet (or frame tail) described by ``text``."""
        self.malformed += 1
        self.last_error = text

    def __repr__(self) -> str:
        return (
            f"ProtocolErrors(malformed={self.malformed}, skipped={dict(self.skipped)}, last_error={self.last_error!r})"
        )


_RECORDS: dict[int, type[Packet]] = {
    ResponseCode.TICKER: TickerPacket,
    ResponseCode.QUOTE: QuotePacket,
    ResponseCode.OI: OIPacket,
    ResponseCode.PREV_CLOSE: PrevClosePacket,
    ResponseCode.FULL: FullPacket,
    ResponseCode.DISCONNECT: DisconnectPacket,
}
_LAYOUTS = {code: struct.Struct(RECORD_FORMATS[code]) for code in _RECORDS}
# The fast paths compare the length field's low byte only.
assert max(PACKET_SIZES.values()) < 256

_new = tuple.__new__


def _decoder(layout: struct.Struct, record: type[Packet]) -> Callable[[Any, int], Packet]:
    """decoder(buf, offset) of one packet kind: the unpacked tuple retyped as the record."""
    assert len(layout.unpack(bytes(layout.size))) == len(record._fields)

    def decode(buf: Any, off: int, _u: Any = layout.unpack_from, _n: Any = _new, _T: Any = record) -> Packet:
        return _n(_T, _u(buf, off))

    return decode


# code -> (exact packet size, decoder(buf, offset))
_DECODERS: dict[int, tuple[int, Callable[[Any, int], Packet]]] = {
    int(code): (PACKET_SIZES[code], _decoder(layout, _RECORDS[code])) for code, layout in _LAYOUTS.items()
}
_SKIPPED = frozenset(int(code) for code in SKIPPED_CODES)

# The fast paths below have checked the frame's length, so they use Struct.unpack (exact
# length, no offset argument to parse), a little cheaper than unpack_from.
_UNPACK_FULL = _LAYOUTS[FULL_CODE].unpack
_UNPACK_DISCONNECT = _LAYOUTS[DISCONNECT_CODE].unpack_from


def decode_packet(
    packet: bytes, errors: ProtocolErrors, _uf: Any = _UNPACK_FULL, _n: Any = _new, _F: Any = FullPacket
) -> Packet | None:
    """Decodes a frame holding exactly one packet (what Dhan sends) without the list of
    decode_frame; None when it holds no valid packet (counted in ``errors``)."""
    if len(packet) == FULL_SIZE and packet[0] == FULL_CODE and packet[1] == FULL_SIZE and packet[2] == 0:
        return _n(_F, _uf(packet))
    decoded = decode_frame(packet, errors)
    return decoded[0] if len(decoded) == 1 else None


def decode_frame(
    frame: bytes | bytearray | memoryview,
    errors: ProtocolErrors,
    _uf: Any = _UNPACK_FULL,
    _uq: Any = _LAYOUTS[QUOTE_CODE].unpack,
    _ut: Any = _LAYOUTS[TICKER_CODE].unpack,
    _n: Any = _new,
    _F: Any = FullPacket,
    _Q: Any = QuotePacket,
    _T: Any = TickerPacket,
) -> list[Packet]:
    """Decodes every packet of one WebSocket binary frame, in order. Never raises on bad
    input: unknown codes, bad lengths and truncation are counted in ``errors``; packets
    before the problem are still returned, and after it when the bad packet's length field
    still delimits it (8 <= length <= bytes left).

    Fast path: a bytes frame holding exactly one Full, Quote or Ticker packet is decoded
    inline (no further Python call); everything else goes through the general splitter,
    which uses the same layouts (the tests check both paths agree)."""
    if type(frame) is bytes or type(frame) is bytearray:
        n = len(frame)
        if n == FULL_SIZE and frame[0] == FULL_CODE and frame[1] == FULL_SIZE and frame[2] == 0:
            return [_n(_F, _uf(frame))]
        if n == QUOTE_SIZE and frame[0] == QUOTE_CODE and frame[1] == QUOTE_SIZE and frame[2] == 0:
            return [_n(_Q, _uq(frame))]
        if n == TICKER_SIZE and frame[0] == TICKER_CODE and frame[1] == TICKER_SIZE and frame[2] == 0:
            return [_n(_T, _ut(frame))]
    return _decode_general(frame, errors)


def disconnect_reason(packet: bytes) -> int:
    """The reason code of a Disconnect packet whose code and length are known to be right."""
    reason: int = _UNPACK_DISCONNECT(packet)[2]
    return reason


def _decode_general(frame: bytes | bytearray | memoryview, errors: ProtocolErrors) -> list[Packet]:
    if isinstance(frame, memoryview) and (frame.format != "B" or frame.ndim != 1):
        frame = frame.cast("B") if frame.c_contiguous else memoryview(frame.tobytes())
    out: list[Packet] = []
    n = len(frame)
    pos = 0
    while pos < n:
        remaining = n - pos
        if remaining < HEADER_SIZE:
            errors.add(f"truncated header at offset {pos}: {remaining} bytes left, a header needs {HEADER_SIZE}")
            break
        code = frame[pos]
        length = frame[pos + 1] | frame[pos + 2] << LENGTH_SHIFT
        if length < HEADER_SIZE:
            errors.add(f"code {code} at offset {pos}: message_length {length} is shorter than the header")
            break
        if length > remaining:
            errors.add(
                f"code {code} at offset {pos}: message_length {length} but only {remaining} bytes left (truncated)"
            )
            break
        entry = _DECODERS.get(code)
        if entry is not None:
            if length == entry[0]:
                out.append(entry[1](frame, pos))
            else:
                errors.add(f"code {code} at offset {pos}: message_length {length}, expected {entry[0]}")
        elif code in _SKIPPED:
            errors.skipped[code] += 1
        else:
            errors.add(f"unknown response code {code} at offset {pos} (message_length {length})")
        pos += length
    return out
