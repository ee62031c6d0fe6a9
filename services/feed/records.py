"""The records of the internal shard stream (RawPackets).

A record is a 16-byte header (the shard's per-instrument sequence, the receive time in µs
since the epoch) followed by one Dhan packet, unchanged; the packet's head
(``services.dhan.protocol.HEAD``) names its code, length and instrument.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from services.dhan.protocol import HEAD, HEADER_SIZE, LENGTH_SHIFT

RECORD_HEADER = struct.Struct("<Qq")  # sequence, receive time (µs since the epoch)
RECORD_HEAD = struct.Struct(RECORD_HEADER.format + HEAD.format.lstrip("<"))  # the record header and the packet's head


def iter_records(blob: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(sequence, receive µs, packet) of each record of a RawPackets blob, up to the first
    truncated one (snapshots, tests and tools; the gateway's hot path reads live blobs in
    place)."""
    offset = 0
    while offset + RECORD_HEAD.size <= len(blob):
        sequence, received_us, head = RECORD_HEAD.unpack_from(blob, offset)
        length = (head >> LENGTH_SHIFT) & 0xFFFF
        start = offset + RECORD_HEADER.size
        if length < HEADER_SIZE or start + length > len(blob):
            return
        yield sequence, received_us, blob[start : start + length]
        offset = start + length
