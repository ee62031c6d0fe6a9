"""A feed shard: follows its assignment, keeps one broker connection in line with it, and
streams the packets it receives to the gateway.

Failure handling, per the broker's rules:
- reconnect with exponential back-off and jitter, capped (60 s), and a full resubscribe
  after every reconnect (the broker forgets subscriptions with the connection);
- a watchdog forces a reconnect when a connection with subscriptions goes silent during
  market hours (Dhan feeds are known to stall without closing);
- 805 (too many connections) backs off for minutes and logs an error, since retrying
  quickly gets the user blocked; 806-810 (entitlement or credentials) stop retrying, and
  health turns NOT_SERVING, until the account's token is replaced (credentials.py): then the
  shard resumes by itself. A token rotated while connected reconnects with it at once.

Every connection state change is sent to the gateways at once, with why and since when the
shard's instruments are not live (connection_state.py), so terminals learn of it at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, cast

import grpc
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2, shard_pb2
from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc
from prometheus_client import Counter, Gauge

from services.common.clients import ServiceCaller
from services.common.clock import Clock, clock_from_settings
from services.common.config import Settings
from services.common.keys import key_from_proto, key_proto, wire_key
from services.common.looplag import watch_loop_lag
from services.common.market_calendar import is_market_open
from services.common.tasks import Spawn
from services.common.timestamps import timestamp_from_epoch
from services.dhan.protocol import FeedMode
from services.feed.shard.broker import BrokerConnection
from services.feed.shard.cache import Ingest, LastValues
from services.feed.shard.connection_state import (
    FATAL_REASONS,
    KICKED,
    REASON_TEXT,
    ConnectionInterruption,
    disconnect_cause,
)
from services.feed.shard.credentials import ShardCredentials
from services.feed.shard.reconcile import Instrument, plan_messages

log = logging.getLogger(__name__)

_STABLE_SECONDS = 30.0
# How long a message may wait for a slow gateway before its stream is cut (it reconnects for
# a fresh snapshot), so overload never turns into minutes of latency. Time, not a count: a
# feed read brings anything from one packet to hundreds.
BEHIND_LIMIT_SECONDS = 10.0
# Most record bytes merged into one message: enough to make catching up a few big reads,
# few enough that applying one never blocks the gateway's event loop (and every terminal
# stream) for long.
MERGE_BYTES = 256 * 1024

MODES = {1: FeedMode.TICKER, 2: FeedMode.QUOTE, 3: FeedMode.FULL}
PROTO_MODES = {mode: cast(common_pb2.FeedMode, proto) for proto, mode in MODES.items()}

PACKETS = Counter("feed_shard_packets_total", "Packets applied to the last-value cache.", ["shard"])
RECONNECTS = Counter(
    "feed_shard_reconnects_total",
    "Broker reconnects, by reason (the disconnect code, closed, rotated).",
    ["shard", "reason"],
)
AWAITING = Gauge(
    "feed_shard_awaiting_first_tick_instruments",
    "Subscribed instruments with no packet after the first-tick deadline.",
    ["shard"],
)
STATE = Gauge("feed_shard_connected", "1 while the broker connection is up.", ["shard"])


class _Overflow(Enum):
    OVERFLOW = "overflow"


Overflow: Final = _Overflow.OVERFLOW  # queued to a gateway stream that fell too far behind


@dataclass(frozen=True)
class Records:
    """One read burst's records, made into a message only when the stream sends it."""

    blob: bytes
    count: int
    shard_sequence: int


# What waits in a gateway stream's queue: a read burst, another message, or the overflow mark.
Queued = Records | shard_pb2.StreamShardTicksResponse | _Overflow


@dataclass(eq=False)  # identity: streams live in a set
class GatewayStream:
    """What waits to be sent to one gateway. Records queued back to back while the gateway
    is busy leave as one message: a gateway that falls behind catches up in a few big
    reads instead of many small ones, each of which costs it a gRPC round trip."""

    queue: deque[tuple[float, Queued]] = field(default_factory=deque)  # (queued at, message)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False
    clock: Callable[[], float] = time.monotonic

    def offer(self, message: Queued) -> None:
        if self.overflowed:
            return
        now = self.clock()
        queue = self.queue
        if queue and now - queue[0][0] > BEHIND_LIMIT_SECONDS:
            self.overflowed = True
            message = Overflow
        queue.append((now, message))
        self.ready.set()

    def take(self) -> shard_pb2.StreamShardTicksResponse | _Overflow | None:
        """The next message (consecutive Records merged), Overflow, or None when empty."""
        queue = self.queue
        if not queue:
            self.ready.clear()
            return None
        first = queue.popleft()[1]
        if not isinstance(first, Records):
            return first
        blobs, count, last, size = [first.blob], first.count, first, len(first.blob)
        while queue:
            following = queue[0][1]
            if not isinstance(following, Records) or size + len(following.blob) > MERGE_BYTES:
                break
            queue.popleft()
            blobs.append(following.blob)
            count += following.count
            size += len(following.blob)
            last = following
        return shard_pb2.StreamShardTicksResponse(
            shard_sequence=last.shard_sequence,
            packets=shard_pb2.RawPackets(records=blobs[0] if len(blobs) == 1 else b"".join(blobs), count=count),
        )


class ShardRuntime:
    def __init__(self, settings: Settings, subscription: grpc.aio.Channel, clock: Clock | None = None) -> None:
        self.settings = settings
        # Market hours for the watchdog: MARKET_CLOCK's clock unless a test injects one.
        self.market_clock = clock or clock_from_settings(settings)
        self.shard_id = settings.shard_id
        self.epoch = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        self.cache = LastValues()
        self.ingest = Ingest(self.cache, self._on_disconnect_packet, self.shard_id)
        self.desired: dict[Instrument, FeedMode] = {}
        self.actual: dict[Instrument, FeedMode] = {}
        self.assignment_version = 0
        self.state = feed_pb2.CONNECTION_STATE_CONNECTING
        self.interruption = ConnectionInterruption(self.started_at)
        # Set with the first assignment: a gateway stream opens on it, so that a restarted
        # shard never tells the gateway it has no instruments before it knows its own.
        self.assigned = asyncio.Event()
        self.last_disconnect_code = 0
        self.last_disconnect_reason = ""
        self.last_disconnect_at: float | None = None
        self.connected_at: float | None = None
        self.next_retry_at: float | None = None
        self.reconnect_count = 0
        self.shard_sequence = 0
        self.streams: set[GatewayStream] = set()
        self._label = str(self.shard_id)
        place = settings.shard_place()
        self.account_id = place.account.account_id
        self.credentials = ShardCredentials(
            place.account, settings.feed_url, self.shard_id, subscription, settings.service_token
        )
        self.credentials.on_new_token = self._reconnect_for_new_token
        self._subscriptions = subscription_pb2_grpc.SubscriptionServiceStub(subscription)
        self._caller = ServiceCaller("subscription", settings.service_token)
        self._connection: BrokerConnection | None = None
        self._connected_monotonic = 0.0
        self._disconnect_code: int | None = None
        self._silent_for: float | None = None  # set when the watchdog closes the connection
        self._rotating = False  # set when a new token closes the connection
        self._changed = asyncio.Event()
        # Told when the shard stops for good (806-810) so health can say NOT_SERVING.
        self.on_health: Callable[[bool], object] = lambda serving: None
        self.late_first_ticks = 0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, spawn: Spawn) -> None:
        for coroutine, name in (
            (self._follow_assignments(), "assignments"),
            (self._run_connection(), "broker"),
            (self._reconcile(), "reconcile"),
            (self._watch(), "watchdog"),
            (self.credentials.watch_file(self.settings.feed_token_file_poll_seconds), "token-file"),
            (watch_loop_lag(), "loop-lag"),
        ):
            spawn(coroutine, f"shard-{self.shard_id}-{name}")

    async def close(self) -> None:
        """Closes the broker connection, once the tasks using it have ended."""
        if self._connection is not None:
            self._connection.close()

    # -- assignment -------------------------------------------------------------------------

    async def _follow_assignments(self) -> None:
        delay = 0.5
        request = subscription_pb2.WatchAssignmentsRequest(
            shard_id=self.shard_id, watcher_id=f"shard-{self.shard_id}/{self.epoch}"
        )
        while True:
            try:
                call = self._subscriptions.WatchAssignments(request, metadata=self._caller.metadata())
                async for message in call:
                    delay = 0.5
                    self.apply_assignment(message)
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "assignment stream lost; keeping the current set",
                    extra={"code": error.code().name, "details": error.details()},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def apply_assignment(self, message: subscription_pb2.WatchAssignmentsResponse) -> None:
        before = dict(self.desired)
        if message.kind == subscription_pb2.ASSIGNMENT_MESSAGE_KIND_SNAPSHOT:
            self.desired = {key_from_proto(a.key): MODES.get(a.mode, FeedMode.FULL) for a in message.assignments}
        elif message.kind == subscription_pb2.ASSIGNMENT_MESSAGE_KIND_CHANGES:
            for assignment in (*message.added, *message.updated):
                self.desired[key_from_proto(assignment.key)] = MODES.get(assignment.mode, FeedMode.FULL)
            for key in message.removed:
                self.desired.pop(key_from_proto(key), None)
        self.assignment_version = message.version
        self.assigned.set()
        if self.desired != before:
            self._changed.set()
            removed = before.keys() - self.desired.keys()
            for instrument in removed:
                self.cache.drop(wire_key(*instrument))
            changed = [i for i, mode in self.desired.items() if before.get(i) != mode]
            self._publish(
                shard_pb2.StreamShardTicksResponse(
                    shard_sequence=self.shard_sequence,
                    instruments_change=shard_pb2.ShardInstrumentsChange(
                        upserted=[self._shard_instrument(i) for i in changed],
                        removed=[key_proto(i) for i in removed],
                        assignment_version=self.assignment_version,
                    ),
                )
            )

    def _shard_instrument(self, instrument: Instrument) -> shard_pb2.ShardInstrument:
        return shard_pb2.ShardInstrument(
            key=key_proto(instrument),
            mode=PROTO_MODES[self.desired[instrument]],
            subscribed=self.actual.get(instrument) == self.desired[instrument],
        )

    # -- broker connection ------------------------------------------------------------------

    async def _run_connection(self) -> None:
        failures = 0
        await self.credentials.load()
        while True:
            token_generation = self.credentials.generation
            uptime = await self._connect_once()
            code = self._disconnect_code or 0
            if code in FATAL_REASONS:
                await self._wait_for_credentials(code, token_generation)
            elif self.credentials.generation != token_generation:  # a new token: use it at once
                RECONNECTS.labels(self._label, "rotated").inc()
                self.reconnect_count += 1
            else:
                failures = 0 if uptime > _STABLE_SECONDS else failures + 1
                await self._back_off(code, failures)

    async def _wait_for_credentials(self, code: int, token_generation: int) -> None:
        """Stopped (NOT_SERVING, no connection attempt) until the account's token is replaced."""
        self._set_state(feed_pb2.CONNECTION_STATE_STOPPED)
        self.on_health(False)
        log.error(
            "feed refused us; waiting for the account's access token to be replaced",
            extra={
                "shard": self.shard_id,
                "account": self.account_id,
                "reason_code": code,
                "reason": FATAL_REASONS[code],
            },
        )
        RECONNECTS.labels(self._label, str(code)).inc()
        await self.credentials.wait_for_new(token_generation)
        self.on_health(True)

    def _reconnect_for_new_token(self) -> None:
        connection = self._connection
        if connection is not None and not connection.closing:
            self._disconnect_code = None
            self._rotating = True
            connection.close()

    async def _connect_once(self) -> float:
        """Opens a connection and serves it until it is gone; its uptime (0 when it never
        opened). It returns only once the socket is closed (the watchdog's close is bounded:
        graceful, then aborted), so the next connection never opens beside it: the broker
        counts every open socket against the account's five, a silent one included."""
        self._set_state(feed_pb2.CONNECTION_STATE_CONNECTING)
        connection = BrokerConnection(self.ingest, self._on_records)
        self._disconnect_code = None
        self._silent_for = None
        self._rotating = False
        token_generation = self.credentials.generation
        try:
            await connection.open(self.credentials.url())
        except Exception as error:  # picows raises several types for refused/failed handshakes
            self._note_disconnect(0, f"connect failed: {self.credentials.redact(str(error))}")
            return 0.0
        self._connection = connection
        if self.credentials.generation != token_generation:  # rotated while connecting
            self._reconnect_for_new_token()
        self.connected_at = time.time()
        self._connected_monotonic = time.monotonic()
        self.actual = {}  # a new connection has no subscriptions: resubscribe everything
        self._set_state(feed_pb2.CONNECTION_STATE_CONNECTED)  # still interrupted until resubscribed
        self._changed.set()
        STATE.labels(self._label).set(1)
        log.info("connected to the feed", extra={"shard": self.shard_id, "instruments": len(self.desired)})
        await connection.disconnected.wait()  # set from connection_lost: the socket is closed
        connection.flush()
        STATE.labels(self._label).set(0)
        self._connection = None
        self.actual = {}
        code = self._disconnect_code or 0
        if self._silent_for is not None and not code:
            reason = f"silent for {self._silent_for:.1f} s (watchdog)"
        elif self._rotating and not code:
            reason = "reconnecting with the account's new access token"
        else:
            reason = REASON_TEXT.get(code, f"connection closed (close code {connection.close_code})")
        self._note_disconnect(code, reason)
        return time.monotonic() - self._connected_monotonic

    async def _back_off(self, code: int, failures: int) -> None:
        if code == KICKED:
            delay = self.settings.feed_kicked_backoff_seconds * random.uniform(1.0, 1.5)
            log.error(
                "feed disconnected us with 805 (too many connections); backing off",
                extra={"shard": self.shard_id, "seconds": round(delay, 1)},
            )
        else:
            delay = min(self.settings.feed_max_backoff_seconds, 0.5 * 2 ** min(failures, 20)) * random.uniform(0.5, 1.0)
        RECONNECTS.labels(self._label, str(code or "closed")).inc()
        self.reconnect_count += 1
        self.next_retry_at = time.time() + delay
        self._set_state(feed_pb2.CONNECTION_STATE_BACKING_OFF)
        await asyncio.sleep(delay)
        self.next_retry_at = None

    def _note_disconnect(self, code: int, reason: str) -> None:
        self.last_disconnect_code = code
        self.last_disconnect_reason = reason
        self.last_disconnect_at = time.time()
        self.interruption.down(disconnect_cause(code, self._silent_for is not None), self.last_disconnect_at)
        if code:
            log.warning("feed disconnect", extra={"shard": self.shard_id, "reason_code": code, "reason": reason})

    def _on_disconnect_packet(self, reason: int) -> None:
        self._disconnect_code = reason

    def _on_records(self, blob: bytes, count: int) -> None:
        self.shard_sequence += count
        PACKETS.labels(self._label).inc(count)
        self._publish(Records(blob, count, self.shard_sequence))

    def _publish(self, message: Records | shard_pb2.StreamShardTicksResponse) -> None:
        for stream in self.streams:
            stream.offer(message)

    def _set_state(self, state: feed_pb2.ConnectionState) -> None:
        """Changes the connection's state and tells every gateway at once (not at its next
        periodic status), so terminals learn of a drop within milliseconds."""
        self.state = state
        self._publish_status()

    def _publish_status(self) -> None:
        if self.streams:
            self._publish(shard_pb2.StreamShardTicksResponse(shard_sequence=self.shard_sequence, status=self.status()))

    # -- reconciling ------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(self.settings.feed_coalesce_seconds)  # gather a burst of changes
            self._changed.clear()
            connection = self._connection
            if connection is None or self.state != feed_pb2.CONNECTION_STATE_CONNECTED:
                continue
            desired = dict(self.desired)
            messages = plan_messages(desired, self.actual)
            for message in messages:
                connection.send_text(message)
            now = time.monotonic()
            for instrument in desired:
                if instrument not in self.actual:
                    self.cache.awaiting[wire_key(*instrument)] = now
            self.actual = desired
            if self.interruption.up():  # connected and resubscribed: the instruments are live again
                self._publish_status()
            if messages:
                log.info(
                    "reconciled with the feed",
                    extra={"shard": self.shard_id, "messages": len(messages), "instruments": len(desired)},
                )

    # -- watchdog and first ticks -----------------------------------------------------------

    def in_market_hours(self) -> bool:
        if not self.settings.feed_market_hours_only:
            return True
        now = self.market_clock.now()
        return is_market_open("NSE", now) or is_market_open("MCX", now)

    async def _watch(self) -> None:
        period = min(1.0, self.settings.feed_watchdog_seconds / 4)
        while True:
            await asyncio.sleep(period)
            if not self.in_market_hours():
                AWAITING.labels(self._label).set(0)
                continue
            now = time.monotonic()
            connection = self._connection
            last = max(self.ingest.counters.last_frame_monotonic, self._connected_monotonic)
            silent = now - last > self.settings.feed_watchdog_seconds
            if connection is not None and not connection.closing and self.actual and silent:
                log.warning(
                    "feed silent; forcing a reconnect",
                    extra={"shard": self.shard_id, "silent_seconds": round(now - last, 1)},
                )
                self._disconnect_code = None
                self._silent_for = now - last
                connection.close()
            deadline = self.settings.feed_first_tick_seconds
            self.late_first_ticks = sum(1 for asked in self.cache.awaiting.values() if now - asked > deadline)
            AWAITING.labels(self._label).set(self.late_first_ticks)

    # -- gateway streams and status ---------------------------------------------------------

    def attach(self) -> tuple[GatewayStream, list[shard_pb2.StreamShardTicksResponse]]:
        """Registers a gateway stream and returns its opening messages, taken in the same
        step so no packet falls between the snapshot and the stream."""
        stream = GatewayStream()
        records, count = self.cache.records()
        hello = shard_pb2.StreamShardTicksResponse(
            shard_sequence=self.shard_sequence,
            hello=shard_pb2.ShardHello(
                shard_id=self.shard_id, shard_epoch=self.epoch, started_at=timestamp_from_epoch(self.started_at)
            ),
        )
        snapshot = shard_pb2.StreamShardTicksResponse(
            shard_sequence=self.shard_sequence,
            snapshot=shard_pb2.ShardSnapshot(
                packets=shard_pb2.RawPackets(records=records, count=count),
                instruments=[self._shard_instrument(i) for i in self.desired],
                assignment_version=self.assignment_version,
            ),
        )
        self.streams.add(stream)
        return stream, [hello, snapshot]

    def detach(self, stream: GatewayStream) -> None:
        self.streams.discard(stream)

    def status(self) -> feed_pb2.ShardStatus:
        counters = self.ingest.counters
        last_frame = None
        if counters.last_frame_monotonic:
            last_frame = time.time() - (time.monotonic() - counters.last_frame_monotonic)
        status = feed_pb2.ShardStatus(
            shard_id=self.shard_id,
            shard_epoch=self.epoch,
            connection_state=self.state,
            reachable=True,
            reported_at=timestamp_from_epoch(time.time()),
            last_disconnect_code=self.last_disconnect_code,
            last_disconnect_reason=self.last_disconnect_reason,
            last_disconnect_at=timestamp_from_epoch(self.last_disconnect_at),
            connected_at=timestamp_from_epoch(self.connected_at)
            if self.state == feed_pb2.CONNECTION_STATE_CONNECTED
            else None,
            instruments_assigned=len(self.desired),
            instruments_subscribed=sum(1 for i, m in self.actual.items() if self.desired.get(i) == m),
            instruments_awaiting_first_tick=self.late_first_ticks,
            frames_received=counters.frames,
            packets_received=counters.packets,
            protocol_errors=counters.protocol_errors,
            last_frame_at=timestamp_from_epoch(last_frame),
            reconnect_count=self.reconnect_count,
            next_retry_at=timestamp_from_epoch(self.next_retry_at),
            assignment_version=self.assignment_version,
        )
        self.interruption.fill(status)
        return status
