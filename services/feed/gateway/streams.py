"""A terminal's stream: which instruments it wants, what is pending for it, and the async
generator that sends a snapshot, then batches of whatever is pending, events and heartbeats.

Slow terminals are conflated: pending holds at most one entry per instrument (the first
sequence not yet sent), and a batch sends every value still in the instrument's short
history from there, or only the latest when the stream fell further behind. A stream that
keeps up therefore loses nothing, and one that stops reading costs one dict entry per
instrument. Batches are pre-serialised bytes, so a tick sent to many terminals is encoded once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from dataserver.feed.v1 import feed_pb2
from google.protobuf.duration_pb2 import Duration
from prometheus_client import Counter

from services.common.errors import ResourceExhausted
from services.feed.gateway.hub import Hub

CONFLATED = Counter("feed_gateway_conflated_total", "Ticks replaced by a newer value before a slow stream took them.")
TICKS_SENT = Counter("feed_gateway_ticks_sent_total", "Ticks sent to terminals.")

HEARTBEAT_SECONDS = 5.0
# After a wake-up, a stream with only a few ticks pending waits this long for more, so one
# gRPC message carries a batch rather than a tick (per-message cost dominates otherwise).
BATCH_DELAY_SECONDS = 0.008
SMALL_BATCH = 64
SLOW_WARNING_SECONDS = 2.0
SLOW_CLOSE_SECONDS = 30.0


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True)
class Shape:
    """Where the parts go in a response type (StreamTicks and InteractiveStreamTicks differ)."""

    response: Any
    batch_tag: bytes  # field tag of `batch` (length-delimited)

    def batch(self, encoded_ticks: list[bytes]) -> bytes:
        parts = []
        for tick in encoded_ticks:
            parts.append(b"\x0a")  # TickBatch.ticks = 1
            parts.append(varint(len(tick)))
            parts.append(tick)
        body = b"".join(parts)
        return self.batch_tag + varint(len(body)) + body


STREAM_TICKS = Shape(feed_pb2.StreamTicksResponse, b"\x12")
INTERACTIVE = Shape(feed_pb2.InteractiveStreamTicksResponse, b"\x1a")


class TerminalStream:
    def __init__(self, hub: Hub, mode: int, shape: Shape, *, max_batch: int = 5000) -> None:
        self.hub = hub
        self.mode = mode
        self.shape = shape
        self.max_batch = max_batch
        self.keys: set[int] = set()
        self.pending: dict[int, int] = {}
        self.pending_since = 0.0
        self.wake = asyncio.Event()
        self.outbox: deque[Any] = deque()  # events and command results, sent before ticks
        self.conflated = 0
        self.close_reason = ""
        self._warned_at = 0.0
        # The task running this stream's RPC, cancelled when a terminal blocked in a write
        # ignores the close for too long (its generator cannot raise while it is blocked).
        self.task: asyncio.Task[Any] | None = None

    # -- called by the hub on the hot path -------------------------------------------------

    def mark(self, key: int, sequence: int) -> None:
        if key not in self.pending:
            if not self.pending:
                self.pending_since = time.monotonic()
            self.pending[key] = sequence
            if not self.wake.is_set():
                self.wake.set()

    def upstream_changed(self, event: feed_pb2.UpstreamStatusChange) -> None:
        self.send_event(feed_pb2.StreamEvent(upstream=event))

    # -- membership --------------------------------------------------------------------------

    def add(self, keys: list[int]) -> None:
        new = [k for k in keys if k not in self.keys]
        self.keys.update(new)
        self.hub.attach(self, new)

    def remove(self, keys: list[int]) -> None:
        gone = [k for k in keys if k in self.keys]
        self.keys.difference_update(gone)
        for key in gone:
            self.pending.pop(key, None)
        self.hub.detach(self, gone)

    def close(self) -> None:
        self.hub.detach(self, list(self.keys))
        self.keys.clear()

    # -- messages ----------------------------------------------------------------------------

    def send_event(self, event: feed_pb2.StreamEvent) -> None:
        event.occurred_at.GetCurrentTime()
        self.outbox.append(self.shape.response(event=event))
        self.wake.set()

    def snapshot(self, keys: list[int], states: list[feed_pb2.InstrumentState], correlation_id: str = "") -> Any:
        ticks = []
        for key in keys:
            instrument = self.hub.instruments.get(key)
            if instrument is not None and instrument.latest is not None:
                ticks.append(instrument.latest.message(self.mode))
                self.pending.pop(key, None)
        return self.shape.response(snapshot=feed_pb2.TickSnapshot(ticks=ticks, instruments=states, correlation_id=correlation_id))

    def take_batch(self) -> bytes | None:
        if not self.pending:
            return None
        if len(self.pending) <= self.max_batch:
            taken, self.pending = self.pending, {}
        else:
            taken = dict(itertools.islice(self.pending.items(), self.max_batch))
            for key in taken:
                del self.pending[key]
            self.pending_since = time.monotonic()
            self.wake.set()
        instruments = self.hub.instruments
        mode = self.mode
        encoded: list[bytes] = []
        for key, first in taken.items():
            instrument = instruments.get(key)
            if instrument is None or instrument.latest is None:
                continue
            history = instrument.history
            if history[0].sequence <= first:
                encoded.extend(v.encoded(mode) for v in history if v.sequence >= first)
            else:
                skipped = instrument.latest.sequence - first  # values replaced before we got to them
                self.conflated += skipped
                CONFLATED.inc(skipped)
                encoded.append(instrument.latest.encoded(mode))
        if not encoded:
            return None
        TICKS_SENT.inc(len(encoded))
        return self.shape.batch(encoded)

    def check_lag(self, now: float) -> None:
        """Warns a stream that has not taken its pending ticks for a while; marks it for
        closing when that lasts too long."""
        if not self.pending:
            return
        lag = now - self.pending_since
        if lag > SLOW_CLOSE_SECONDS + HEARTBEAT_SECONDS and self.task is not None:
            self.task.cancel()
        elif lag > SLOW_CLOSE_SECONDS:
            self.close_reason = f"terminal fell {lag:.0f} s behind; reconnect for a fresh snapshot"
            self.wake.set()
        elif lag > SLOW_WARNING_SECONDS and now - self._warned_at > SLOW_WARNING_SECONDS:
            self._warned_at = now
            self.send_event(feed_pb2.StreamEvent(slow_consumer=feed_pb2.SlowConsumerWarning(
                lag=Duration(seconds=int(lag), nanos=int(lag % 1 * 1e9)),
                conflated_updates=self.conflated, pending_instruments=len(self.pending),
            )))

    async def run(self) -> AsyncIterator[Any]:
        """Batches of whatever is pending, as fast as the terminal takes them."""
        while True:
            if self.close_reason:
                raise ResourceExhausted(self.close_reason)
            if not self.wake.is_set():
                try:
                    await asyncio.wait_for(self.wake.wait(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    heartbeat = feed_pb2.Heartbeat()
                    heartbeat.server_time.GetCurrentTime()
                    yield self.shape.response(heartbeat=heartbeat)
                    continue
            if len(self.pending) < SMALL_BATCH and not self.outbox:
                await asyncio.sleep(BATCH_DELAY_SECONDS)
            self.wake.clear()
            while self.outbox:
                yield self.outbox.popleft()
            batch = self.take_batch()
            if batch is not None:
                yield batch
