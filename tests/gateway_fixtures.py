"""A gateway hub with no shards, fed by hand with shard records of one instrument: what the
gateway's unit tests share."""

from __future__ import annotations

import time

from services.common.keys import instrument_key
from services.dhan import encode_full
from services.feed.gateway.hub import Hub, ShardLink
from services.feed.records import RECORD_HEADER

SEGMENT, SECURITY_ID = 2, 40_001  # NSE_FNO
KEY = instrument_key(SEGMENT, SECURITY_ID)


def full_packet(ltp: float = 100.0, volume: int = 1000) -> bytes:
    """A Full packet of the instrument."""
    return encode_full(
        SEGMENT, SECURITY_ID, ltp, 75, 1_700_000_000, 100.0, volume, 10, 10, 5, 5, 5, 99.0, 100.0, 101.0, 98.0
    )


def records(sequence: int, *packets: bytes, received_us: int | None = None) -> bytes:
    """Shard records of `packets`, all numbered `sequence` (received now unless given)."""
    stamp = int(time.time() * 1e6) if received_us is None else received_us
    return b"".join(RECORD_HEADER.pack(sequence, stamp) + packet for packet in packets)


def hub_and_link() -> tuple[Hub, ShardLink]:
    return Hub((), gateway_id="test"), ShardLink(0, "unused", epoch="e1")
