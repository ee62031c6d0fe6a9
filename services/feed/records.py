"""The records of the internal shard stream (RawPackets), and instrument keys.

A record is a 16-byte header (the shard's per-instrument sequence, the receive time in µs
since the epoch) followed by one Dhan packet, unchanged. A packet's first 8 bytes, read as
one little-endian int, are code | length << 8 | key << 24, where the key (segment byte |
security id << 8) names the instrument: one unpack gives all three.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from dataserver.common.v1 import common_pb2

from services.common.instruments import PROTO_TO_SEGMENT, SEGMENT_WIRE_CODES

RECORD_HEADER = struct.Struct("<Qq")  # sequence, receive time (µs since the epoch)
PACKET_HEAD = struct.Struct("<Q")  # code | length << 8 | key << 24
RECORD_HEAD = struct.Struct("<QqQ")  # the record header and the packet's head in one unpack

TICK_CODES = frozenset({2, 4, 8})  # Ticker, Quote, Full: the packets that carry a price
OI_CODE, PREV_CLOSE_CODE, DISCONNECT_CODE = 5, 6, 50


def instrument_key(segment_code: int, security_id: int) -> int:
    """One int per instrument, equal to bytes 3..7 of its packets read little-endian."""
    return segment_code | (security_id << 8)


def wire_key(segment: str, security_id: int) -> int:
    """instrument_key of a Dhan segment name."""
    return instrument_key(SEGMENT_WIRE_CODES[segment], security_id)


def proto_wire_key(key: common_pb2.InstrumentKey) -> int:
    """instrument_key of a contract InstrumentKey (whose segment must be set)."""
    return wire_key(PROTO_TO_SEGMENT[key.exchange_segment], key.security_id)


def split_head(head: int) -> tuple[int, int, int]:
    """(code, length, key) of a packet head."""
    return head & 0xFF, (head >> 8) & 0xFFFF, head >> 24


def iter_records(blob: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(sequence, receive µs, packet) of each record of a RawPackets blob, up to the first
    truncated one (snapshots, tests and tools; the gateway's hot path reads live blobs in
    place)."""
    offset = 0
    while offset + RECORD_HEAD.size <= len(blob):
        sequence, received_us, head = RECORD_HEAD.unpack_from(blob, offset)
        length = (head >> 8) & 0xFFFF
        start = offset + RECORD_HEADER.size
        if length < PACKET_HEAD.size or start + length > len(blob):
            return
        yield sequence, received_us, blob[start : start + length]
        offset = start + length
