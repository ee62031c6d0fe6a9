"""The shard's hot path: split a frame into packets, keep the last value of every instrument
as the raw packets themselves, number them, and batch them for the gateway.

Packets are never re-encoded: the cache and the gateway stream carry Dhan's bytes, and only
the 8-byte header is read here (the gateway decodes fields once, for all terminals).

Bytes that are no packet (garbage) are dropped, counted, exported as a metric and logged,
at most one warning per interval per shard: a feed sending garbage must not flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from services.dhan.decode import disconnect_reason
from services.dhan.protocol import (
    DISCONNECT_CODE,
    HEAD,
    HEADER_SIZE,
    OI_CODE,
    PACKET_SIZES,
    PREV_CLOSE_CODE,
    SKIPPED_CODES,
    TICK_CODES,
)
from services.feed.records import RECORD_HEADER

log = logging.getLogger(__name__)

# Observed once per subscription (and again after a reconnect resubscribes), never per packet after.
FIRST_TICK = Histogram(
    "feed_shard_first_tick_seconds",
    "From asking the broker for an instrument to its first packet.",
    ["shard"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
PROTOCOL_ERRORS = Counter(
    "feed_shard_protocol_errors_total", "Feed bytes dropped as no valid packet, by kind.", ["shard", "kind"]
)
ERROR_LOG_SECONDS = 10.0  # at most one garbage warning per shard this often
TRUNCATED_HEADER, BAD_LENGTH, UNKNOWN_CODE = "truncated_header", "bad_length", "unknown_code"


@dataclass
class Counters:
    frames: int = 0
    packets: int = 0
    protocol_errors: int = 0
    skipped: int = 0
    last_frame_monotonic: float = 0.0
    last_error: str = ""


@dataclass
class LastValues:
    """Latest packets per instrument: the tick (ticker/quote/full), OI and previous close."""

    sequences: dict[int, int] = field(default_factory=dict)
    ticks: dict[int, bytes] = field(default_factory=dict)
    open_interest: dict[int, bytes] = field(default_factory=dict)
    previous_close: dict[int, bytes] = field(default_factory=dict)
    # Subscribed instruments still waiting for their first packet: key -> monotonic time asked.
    awaiting: dict[int, float] = field(default_factory=dict)

    def drop(self, key: int) -> None:
        for table in (self.sequences, self.ticks, self.open_interest, self.previous_close, self.awaiting):
            table.pop(key, None)

    def records(self) -> tuple[bytes, int]:
        """Every cached packet as stream records (for a snapshot)."""
        parts: list[bytes] = []
        now_us = time.time_ns() // 1000
        count = 0
        for table in (self.previous_close, self.open_interest, self.ticks):
            for key, packet in table.items():
                parts.append(RECORD_HEADER.pack(self.sequences.get(key, 0), now_us))
                parts.append(packet)
                count += 1
        return b"".join(parts), count


class ProtocolErrorLog:
    """Exports each protocol error as it is counted (errors are off the packet path) and logs
    them: the first at once, those that follow within the interval in one line at its end,
    saying how many were dropped and the last one."""

    def __init__(self, shard: int, interval: float = ERROR_LOG_SECONDS) -> None:
        self.shard = shard
        self.interval = interval
        self._label = str(shard)
        self._unlogged = 0
        self._last_error = ""
        self._logged_at = -interval
        self._flush_later: asyncio.TimerHandle | None = None

    def count(self, kind: str, message: str) -> None:
        PROTOCOL_ERRORS.labels(self._label, kind).inc()
        self._unlogged += 1
        self._last_error = message
        wait = self._logged_at + self.interval - time.monotonic()
        if wait <= 0:
            self.flush()
        elif self._flush_later is None:
            # Without an event loop (frames fed by hand), the next error after the interval logs.
            with contextlib.suppress(RuntimeError):
                self._flush_later = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        if self._flush_later is not None:  # called by an error at the interval's end, before the timer
            self._flush_later.cancel()
            self._flush_later = None
        if not self._unlogged:
            return
        log.warning(
            "bytes from the feed that are no packet; dropped",
            extra={"shard": self.shard, "dropped": self._unlogged, "last_error": self._last_error},
        )
        self._unlogged = 0
        self._logged_at = time.monotonic()


class Ingest:
    """Applies frames to the cache and collects the records of the current read burst."""

    def __init__(self, cache: LastValues, on_disconnect: Callable[[int], None], shard: int = 0) -> None:
        self.cache = cache
        self.counters = Counters()
        self.errors = ProtocolErrorLog(shard)
        self._first_tick = FIRST_TICK.labels(str(shard))
        self._on_disconnect = on_disconnect
        self._pending: list[bytes] = []
        self._pending_count = 0

    def frame(self, data: bytes, now_monotonic: float) -> None:
        counters = self.counters
        counters.frames += 1
        counters.last_frame_monotonic = now_monotonic
        now_us = time.time_ns() // 1000
        cache = self.cache
        sequences = cache.sequences
        awaiting = cache.awaiting
        pending = self._pending
        unpack_head, pack_header = HEAD.unpack_from, RECORD_HEADER.pack
        size = len(data)
        offset = 0
        while offset < size:
            if size - offset < HEADER_SIZE:
                self._error(TRUNCATED_HEADER, f"truncated header: {size - offset} bytes")
                return
            head = unpack_head(data, offset)[0]
            code = head & 0xFF  # protocol.HEAD: code | length << 8 | key << 24
            length = (head >> 8) & 0xFFFF
            expected = PACKET_SIZES.get(code)
            if length < HEADER_SIZE or offset + length > size or (expected is not None and expected != length):
                self._error(BAD_LENGTH, f"bad length {length} for code {code} at offset {offset} of {size}")
                return
            packet = data if length == size else data[offset : offset + length]
            offset += length
            if code in TICK_CODES:
                table = cache.ticks
            elif code == OI_CODE:
                table = cache.open_interest
            elif code == PREV_CLOSE_CODE:
                table = cache.previous_close
            elif code == DISCONNECT_CODE:
                self._on_disconnect(disconnect_reason(packet))
                continue
            elif code in SKIPPED_CODES:
                counters.skipped += 1
                continue
            else:
                self._error(UNKNOWN_CODE, f"unknown response code {code}")
                continue
            key = head >> 24
            table[key] = packet
            sequence = sequences.get(key, 0) + 1
            sequences[key] = sequence
            if awaiting and key in awaiting:
                self._first_tick.observe(now_monotonic - awaiting.pop(key))
            pending.append(pack_header(sequence, now_us))
            pending.append(packet)
            self._pending_count += 1

    def take(self) -> tuple[bytes, int]:
        """The records gathered since the last call, as one blob."""
        if not self._pending_count:
            return b"", 0
        blob = b"".join(self._pending)
        count = self._pending_count
        self._pending.clear()
        self._pending_count = 0
        self.counters.packets += count
        return blob, count

    def _error(self, kind: str, message: str) -> None:
        self.counters.protocol_errors += 1
        self.counters.last_error = message
        self.errors.count(kind, message)
