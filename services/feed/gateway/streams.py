"""A terminal's stream: which instruments it wants, what is pending for it, and the async
generator that sends a snapshot, then batches of whatever is pending, events and heartbeats.

Batching is adaptive: one Dispatcher clock releases every stream that has ticks pending
and is waiting for work, so a message carries whatever piled up since the last one. The
busier the gateway, or the slower a terminal, the bigger the batches; a stream still
writing its last message is not released, and sends as soon as that write completes.

Slow terminals are conflated: pending holds at most one entry per instrument (the first
sequence not yet sent), and a batch sends every value still in the instrument's short
history from there, or only the latest when the stream fell further behind. A stream that
keeps up therefore loses nothing, and one that stops reading costs one dict entry per
instrument. Batches are pre-serialised bytes, so a tick sent to many terminals is encoded once.
Conflation is counted as it happens: the once-a-second check counts the values a stalled
stream can no longer get (its instrument moved past the history), not only its next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from dataserver.feed.v1 import feed_pb2
from google.protobuf.duration_pb2 import Duration
from prometheus_client import Counter, Histogram

from services.common.errors import error_with
from services.common.keys import proto_wire_key
from services.common.tasks import cancel_soon
from services.feed.gateway.encoding import varint
from services.feed.gateway.hub import Hub, Instrument
from services.feed.gateway.upstream import instrument_state

CONFLATED = Counter("feed_gateway_conflated_total", "Ticks replaced by a newer value before a slow stream took them.")
TICKS_SENT = Counter("feed_gateway_ticks_sent_total", "Ticks sent to terminals.")
BATCHES_SENT = Counter("feed_gateway_batches_sent_total", "Tick batches sent to terminals.")
# Where a tick's time at the gateway goes: waiting for its batch, then gRPC taking the batch
# (the stream cannot send again until it has).
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0)
BATCH_WAIT = Histogram(
    "feed_gateway_batch_wait_seconds",
    "From a batch's first pending tick to the batch being taken.",
    buckets=_WAIT_BUCKETS,
)
BATCH_WRITE = Histogram(
    "feed_gateway_batch_write_seconds", "From a batch being taken to gRPC accepting its write.", buckets=_WAIT_BUCKETS
)

# The dispatcher's clock (GATEWAY_BATCH_SECONDS). A gRPC message costs far more CPU, here
# and at the terminal, than a tick in it (make bench), so ticks wait up to one period to
# share a message. The clock's ticks are event-loop timers, so under load they come late and
# the period stretches by itself: the busier the gateway, the bigger the batches. A shorter
# period lowers latency at moderate rates for more CPU (make bench measures both).
CLOCK_SECONDS = 0.010
# Phases of the clock's period (see Dispatcher): fewer release more streams at once, more
# cost more timers; chosen by end-to-end latency under load (make bench).
SLICES = 10
MAX_DELAY_SECONDS = 1.0
MAX_BATCH_TICKS = 5000
HEARTBEAT_SECONDS = 5.0
SLOW_WARNING_SECONDS = 2.0
# Pending for longer than any batching delay: the stream is stalled, and its conflation is counted by the check.
STALLED_SECONDS = MAX_DELAY_SECONDS
SLOW_CLOSE_SECONDS = 30.0


@dataclass(frozen=True)
class Shape:
    """Where the parts go in a response type (StreamTicks and InteractiveStreamTicks differ)."""

    response: Any
    batch_tag: bytes  # field tag of `batch` (length-delimited)

    def batch(self, entries: list[bytes], sent_at_ns: int) -> bytes:
        """A response holding a TickBatch of encoded `ticks` entries and its sent_at."""
        seconds, nanos = divmod(sent_at_ns, 1_000_000_000)
        stamp = b"\x08" + varint(seconds) + b"\x10" + varint(nanos)
        entries.append(b"\x12" + varint(len(stamp)) + stamp)  # TickBatch.sent_at, after the ticks
        body = b"".join(entries)
        return self.batch_tag + varint(len(body)) + body


STREAM_TICKS = Shape(feed_pb2.StreamTicksResponse, b"\x12")
INTERACTIVE = Shape(feed_pb2.InteractiveStreamTicksResponse, b"\x1a")


class Dispatcher:
    """The clock of every terminal stream: each period it releases the streams that are due.

    Streams are spread round robin over SLICES phases of the period and released a slice at
    a time, so each release is a fraction of the streams' work: in between, the event loop
    reads the shards, instead of their messages waiting behind every stream's batch at once
    (which shows as ingest latency under load, make bench)."""

    def __init__(self, period: float = CLOCK_SECONDS, slices: int = SLICES) -> None:
        self.period = period
        self.slices: list[set[TerminalStream]] = [set() for _ in range(slices)]
        self._assigned = 0

    def slot(self) -> set[TerminalStream]:
        """The set a new stream joins when it is due: the next slice, round robin."""
        slot = self.slices[self._assigned % len(self.slices)]
        self._assigned += 1
        return slot

    def is_due(self, stream: TerminalStream) -> bool:
        return any(stream in slot for slot in self.slices)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = self.period / len(self.slices)
        index = 0
        while True:
            await asyncio.sleep(tick)
            self.release(index, loop.time())
            index = (index + 1) % len(self.slices)

    def release(self, index: int, now: float) -> None:
        """Releases the due streams of one slice; those not ready stay due."""
        slot = self.slices[index]
        if slot:
            due = list(slot)
            slot.clear()
            for stream in due:
                if not stream.release(now):
                    slot.add(stream)


class TerminalStream:
    def __init__(
        self,
        hub: Hub,
        dispatcher: Dispatcher,
        mode: int,
        shape: Shape,
        *,
        max_batch: int = MAX_BATCH_TICKS,
        delay: float = 0.0,
    ) -> None:
        self.hub = hub
        self.dispatcher = dispatcher
        self.mode = mode
        self.shape = shape
        self.max_batch = max_batch
        self.delay = delay  # the terminal's max_batch_delay, beyond the clock's period
        self.keys: set[int] = set()
        self.pending: dict[int, int] = {}
        # Values already counted as conflated by `check`, per pending instrument (stalled streams only).
        self.counted: dict[int, int] = {}
        self.pending_since = 0.0
        self.outbox: deque[Any] = deque()  # events and command results, sent before ticks
        self.conflated = 0
        self.close_reason = ""
        self.close_code = grpc.StatusCode.ABORTED
        self.last_sent = time.monotonic()
        self._warned_at = 0.0
        self._waiter: asyncio.Future[None] | None = None  # set while the generator waits for work
        self._missed = False  # the clock found it still writing
        self._due = dispatcher.slot()  # where it waits for its release, in the dispatcher
        # The task of the RPC that opened it, cancelled when a terminal blocked in a write
        # ignores the close for too long (its generator cannot raise while it is blocked).
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        self._tasks: list[asyncio.Task[None]] = []  # work that lives as long as the stream
        # The market state its snapshots carry (the servicer sets the gateway's).
        self.market_states: Callable[[], Iterable[feed_pb2.SegmentMarketState]] = tuple

    # -- called by the hub on the hot path -------------------------------------------------

    def mark(self, key: int, sequence: int) -> None:
        pending = self.pending
        if key not in pending:
            if not pending:
                self.pending_since = time.monotonic()
                self._due.add(self)
            pending[key] = sequence

    # -- called by the hub on upstream changes ----------------------------------------------

    def upstream_changed(self, event: feed_pb2.UpstreamStatusChange) -> None:
        """Sends the event; a RESTORED one is followed by a snapshot of its instruments."""
        self.send_event(feed_pb2.StreamEvent(upstream=event))
        if event.state == feed_pb2.UPSTREAM_STATE_RESTORED:
            keys = [k for k in map(proto_wire_key, event.instruments) if k in self.keys]
            self.post(self.snapshot(keys, [self.state(k) for k in keys], market_states=self.market_states()))

    def status_changed(self, instrument: Instrument) -> None:
        if instrument.key in self.keys:
            self.send_event(feed_pb2.StreamEvent(instrument_status=self.state(instrument.key)))

    def state(self, key: int) -> feed_pb2.InstrumentState:
        """How one of its instruments stands now, stale marks included."""
        return instrument_state(self.hub, key, self.mode)

    # -- called by the dispatcher ------------------------------------------------------------

    def release(self, now: float) -> bool:
        """Lets a waiting stream take its batch; False keeps it due (too early, or still
        writing its last message)."""
        if not self.pending:
            return True  # its instruments were removed
        if now - self.pending_since < self.delay:
            return False
        if self._waiter is None:
            self._missed = True  # still writing: send as soon as that write completes
            return False
        self._wake()
        return True

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
            self.counted.pop(key, None)
        self.hub.detach(self, gone)

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Runs `coroutine` until the stream closes (its command reader, its watchlist follower)."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.append(task)
        return task

    def close(self) -> None:
        self.hub.detach(self, list(self.keys))
        self.keys.clear()
        self._due.discard(self)
        cancel_soon(self._tasks)
        self._tasks.clear()

    # -- messages ----------------------------------------------------------------------------

    def post(self, message: Any) -> None:
        """Queues an event, command result or snapshot, sent before any further ticks."""
        self.outbox.append(message)
        self._wake()

    def close_with(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.ABORTED) -> None:
        """Ends the stream with `code` and `reason`, at its next message. ABORTED by default: the
        server gave up on this stream (a terminal too far behind), and the terminal reconnects for
        a fresh snapshot; UNAVAILABLE when the server is going away."""
        self.close_reason = reason
        self.close_code = code
        self._wake()

    def send_event(self, event: feed_pb2.StreamEvent) -> None:
        """Queues `event`, stamped now unless it says when it happened (a market phase change)."""
        if not event.HasField("occurred_at"):
            event.occurred_at.GetCurrentTime()
        self.post(self.shape.response(event=event))

    def snapshot(
        self,
        keys: list[int],
        states: list[feed_pb2.InstrumentState],
        correlation_id: str = "",
        market_states: Iterable[feed_pb2.SegmentMarketState] = (),
    ) -> Any:
        ticks = []
        for key in keys:
            instrument = self.hub.instruments.get(key)
            if instrument is not None and instrument.latest is not None:
                ticks.append(instrument.latest.message(self.mode))
                first = self.pending.pop(key, None)
                counted = self.counted.pop(key, 0)
                if first is not None:  # pending values the snapshot's latest replaces are conflated
                    skipped = instrument.latest.sequence - first - counted
                    if skipped > 0:
                        self.conflated += skipped
                        CONFLATED.inc(skipped)
        return self.shape.response(
            snapshot=feed_pb2.TickSnapshot(
                ticks=ticks, instruments=states, correlation_id=correlation_id, market_states=market_states
            )
        )

    def take_batch(self) -> bytes | None:
        """Every pending value, at most max_batch ticks; what does not fit stays pending."""
        pending = self.pending
        if not pending:
            return None
        self.pending = {}
        counted = self.counted
        instruments = self.hub.instruments
        mode = self.mode
        room = self.max_batch
        entries: list[bytes] = []
        rest: dict[int, int] = {}
        append = entries.append
        for key, first in pending.items():
            if room <= 0:
                rest[key] = first
                continue
            instrument = instruments.get(key)
            if instrument is None:
                continue
            latest = instrument.latest
            if latest is None:
                continue
            if latest.sequence == first:  # the common case: one new value since the last batch
                append(latest.entry(mode))
                room -= 1
                continue
            history = instrument.history
            if history[0].sequence <= first:
                values = [v for v in history if v.sequence >= first]
            else:
                # Values replaced before we got to them, less those `check` counted already.
                skipped = latest.sequence - first - counted.get(key, 0)
                if skipped > 0:
                    self.conflated += skipped
                    CONFLATED.inc(skipped)
                values = [latest]
            if len(values) > room:
                rest[key] = values[room].sequence
                values = values[:room]
            entries.extend(v.entry(mode) for v in values)
            room -= len(values)
        if counted:
            self.counted = {k: counted[k] for k in rest if k in counted}
        if rest:
            self.pending = rest
            self.pending_since = time.monotonic()
            self._due.add(self)
        if not entries:
            return None
        TICKS_SENT.inc(len(entries))
        BATCHES_SENT.inc()
        return self.shape.batch(entries, time.time_ns())

    def check(self, now: float) -> None:
        """Once a second: a heartbeat for an idle stream; a warning for one that has not
        taken its pending ticks for a while, and its end when that lasts too long."""
        if now - self.last_sent >= HEARTBEAT_SECONDS and not self.outbox:
            heartbeat = feed_pb2.Heartbeat()
            heartbeat.server_time.GetCurrentTime()
            self.post(self.shape.response(heartbeat=heartbeat))
        if not self.pending:
            return
        lag = now - self.pending_since
        if lag > STALLED_SECONDS:
            self.count_conflated()
        if lag > SLOW_CLOSE_SECONDS + HEARTBEAT_SECONDS and self.task is not None:
            self.task.cancel()
        elif lag > SLOW_CLOSE_SECONDS:
            self.close_with(f"terminal fell {lag:.0f} s behind; reconnect for a fresh snapshot")
        elif lag > SLOW_WARNING_SECONDS and now - self._warned_at > SLOW_WARNING_SECONDS:
            self._warned_at = now
            self.send_event(
                feed_pb2.StreamEvent(
                    slow_consumer=feed_pb2.SlowConsumerWarning(
                        lag=Duration(seconds=int(lag), nanos=int(lag % 1 * 1e9)),
                        conflated_updates=self.conflated,
                        pending_instruments=len(self.pending),
                    )
                )
            )

    def count_conflated(self) -> None:
        """Counts the values this stream can no longer get: an instrument whose history moved
        past its first pending value will send only its latest one (see take_batch)."""
        instruments = self.hub.instruments
        counted = self.counted
        for key, first in self.pending.items():
            instrument = instruments.get(key)
            if instrument is None or instrument.latest is None or instrument.history[0].sequence <= first:
                continue
            replaced = instrument.latest.sequence - first
            new = replaced - counted.get(key, 0)
            if new > 0:
                counted[key] = replaced
                self.conflated += new
                CONFLATED.inc(new)

    @property
    def waiting(self) -> bool:
        """Whether its generator waits for work (not suspended in gRPC's write of its last message)."""
        return self._waiter is not None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _overdue(self) -> bool:
        """The clock came while the last message was being written, or ticks waited a whole
        period meanwhile: send now."""
        return bool(self.pending) and (
            self._missed or time.monotonic() - self.pending_since >= self.dispatcher.period + self.delay
        )

    async def run(self) -> AsyncGenerator[Any, None]:
        """Batches of whatever is pending, as fast as the terminal takes them."""
        loop = asyncio.get_running_loop()
        while True:
            if self.close_reason:
                raise error_with(self.close_code, self.close_reason)
            if not self.outbox and not self._overdue():
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                if self.close_reason:
                    continue
            else:
                self._due.discard(self)
            self._missed = False
            while self.outbox:
                yield self.outbox.popleft()
            waited_since = self.pending_since
            batch = self.take_batch()
            if batch is not None:
                taken = time.monotonic()
                BATCH_WAIT.observe(taken - waited_since)
                yield batch
                self.last_sent = time.monotonic()
                BATCH_WRITE.observe(self.last_sent - taken)
            else:
                self.last_sent = time.monotonic()
