"""The gateway's last-value cache, fed by every shard's internal stream, and the fan-out
index from instruments to the terminal streams that want them.

Sequence numbers seen by terminals stay increasing per instrument across shard restarts and
moves: when an instrument's source changes (a new shard epoch, or a move to another shard),
its numbering continues from the last value plus a visible gap of one.

Upstream status (see upstream.py) is kept per shard link: terminals following a down
shard's instruments are told once per outage, snapshots mark those instruments stale, and
instruments moved to a live shard are announced live again. Nothing of it is per packet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import grpc
from dataserver.feed.v1 import feed_pb2, shard_pb2, shard_pb2_grpc
from prometheus_client import Counter, Gauge, Histogram

from services.common.clients import open_channel
from services.common.keys import proto_wire_key, wire_key_proto
from services.common.tasks import Spawn
from services.dhan.decode import ProtocolErrors
from services.dhan.protocol import HEAD, OI_CODE, PACKET_SIZES, PREV_CLOSE_CODE, TICK_CODES, split_head
from services.feed.gateway import upstream
from services.feed.gateway.encoding import full_entry_prefix, key_field
from services.feed.gateway.upstream import Outage
from services.feed.gateway.values import Value
from services.feed.records import RECORD_HEAD, RECORD_HEADER, iter_records

log = logging.getLogger(__name__)

HISTORY = 3  # values kept per instrument: enough that a stream keeping up with the feed loses none
_VALUE_CODES = TICK_CODES | {OI_CODE, PREV_CLOSE_CODE}
_SNAPSHOT_PART = {**dict.fromkeys(TICK_CODES, 2), OI_CODE: 3, PREV_CLOSE_CODE: 4}  # its index in a merged entry
# A fixed, small HTTP/2 window on shard streams: when the gateway is busy, a shard's
# backlog waits in the shard, which merges it into one message, rather than here as
# many small ones that cost a read each.
SHARD_CHANNEL_OPTIONS = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 256 * 1024))
PACKETS = Counter("feed_gateway_packets_total", "Packets applied from the shards.")
# How stale a shard message is when the gateway applies it: from the shard's receipt of its
# first packet. What the gateway adds before batching starts (the shard's own part is small).
INGEST_LAG = Histogram(
    "feed_gateway_ingest_lag_seconds",
    "From a shard receiving a message's first packet to the gateway applying it.",
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0),
)
SHARDS_UP = Gauge("feed_gateway_shards_connected", "Shard streams currently open.")
STALE = Gauge(
    "feed_gateway_stale_instruments",
    "Instruments whose values are stale, by the outage's cause (broker_disconnected, shard_unreachable, ...).",
    ["reason"],
)
_STALE_REASONS = {
    cause: name.removeprefix("UPSTREAM_CAUSE_").lower()
    for name, cause in feed_pb2.UpstreamCause.items()
    if cause not in (feed_pb2.UPSTREAM_CAUSE_UNSPECIFIED, feed_pb2.UPSTREAM_CAUSE_MOVED)  # MOVED ends an outage
}


class Subscriber(Protocol):
    def mark(self, key: int, sequence: int) -> None: ...

    def upstream_changed(self, event: feed_pb2.UpstreamStatusChange) -> None: ...

    def status_changed(self, instrument: Instrument) -> None:
        """The instrument became subscribed upstream (mode set) or stopped being (mode 0)."""


class Instrument:
    __slots__ = (
        "full_prefix",
        "history",
        "key",
        "key_proto",
        "latest",
        "mode",
        "offset",
        "shard_id",
        "source",
        "subscribers",
    )

    def __init__(self, key: int) -> None:
        self.key = key
        self.key_proto = wire_key_proto(key)
        self.full_prefix = full_entry_prefix(key_field(self.key_proto))
        self.latest: Value | None = None
        self.history: deque[Value] = deque(maxlen=HISTORY)
        self.source: tuple[int, str] | None = None  # (shard id, epoch) whose numbering we follow
        self.offset = 0
        self.subscribers: set[Subscriber] = set()
        self.mode = 0  # upstream mode; 0 when no shard has it
        self.shard_id: int | None = None


@dataclass
class ShardLink:
    shard_id: int
    address: str
    epoch: str = ""
    connected: bool = False
    status: feed_pb2.ShardStatus | None = None
    instruments: set[int] = field(default_factory=set)
    lost_since: float | None = None  # while the stream from the shard is lost
    lost_detail: str = ""
    outage: Outage | None = None  # as announced to terminals; None while its instruments are live
    restarted: bool = False  # the last hello carried a new epoch


class Hub:
    def __init__(self, shard_addresses: tuple[str, ...], gateway_id: str, service_token: str | None = None) -> None:
        self.instruments: dict[int, Instrument] = {}
        self.links = [ShardLink(n, address) for n, address in enumerate(shard_addresses)]
        self.errors = ProtocolErrors()
        self._gateway_id = gateway_id
        # The shards accept only the deployment's service key (in api_key mode).
        self._metadata = (("authorization", f"Bearer {service_token}"),) if service_token else ()
        self._channels: list[grpc.aio.Channel] = []
        # Instruments taken off a down shard (break before make): the outage they left, until
        # another shard takes them (announced as moved) or their shard is back.
        self._left_stale: dict[int, tuple[int, Outage]] = {}

    # -- terminals ----------------------------------------------------------------------------

    def instrument(self, key: int) -> Instrument:
        found = self.instruments.get(key)
        if found is None:
            found = self.instruments[key] = Instrument(key)
        return found

    def attach(self, subscriber: Subscriber, keys: list[int]) -> None:
        for key in keys:
            self.instrument(key).subscribers.add(subscriber)

    def detach(self, subscriber: Subscriber, keys: list[int]) -> None:
        for key in keys:
            instrument = self.instruments.get(key)
            if instrument is not None:
                instrument.subscribers.discard(subscriber)
                if not instrument.subscribers and instrument.mode == 0:
                    del self.instruments[key]
                    self._left_stale.pop(key, None)

    def upstream(self, key: int) -> bool:
        instrument = self.instruments.get(key)
        return instrument is not None and instrument.mode != 0

    # -- shards -------------------------------------------------------------------------------

    def start(self, spawn: Spawn) -> None:
        for link in self.links:
            spawn(self._follow(link), f"gateway-shard-{link.shard_id}")

    async def close(self) -> None:
        """Closes the shard channels, once the tasks following them have ended."""
        for channel in self._channels:
            await channel.close()

    async def _follow(self, link: ShardLink) -> None:
        channel = open_channel(link.address, SHARD_CHANNEL_OPTIONS)
        self._channels.append(channel)
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        delay = 0.2
        while True:
            try:
                request = shard_pb2.StreamShardTicksRequest(gateway_id=self._gateway_id)
                call = stub.StreamShardTicks(request, metadata=self._metadata)
                async for message in call:
                    delay = 0.2
                    self._on_message(link, message)
                self._lost(link, "shard stream ended")
            except grpc.aio.AioRpcError as error:
                if link.connected or link.lost_since is None:
                    log.warning("shard stream lost", extra={"shard": link.shard_id, "code": error.code().name})
                self._lost(link, f"shard stream lost: {error.code().name}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_message(self, link: ShardLink, message: shard_pb2.StreamShardTicksResponse) -> None:
        body = message.WhichOneof("body")
        if body == "packets":
            records = message.packets.records
            if len(records) >= RECORD_HEAD.size:
                INGEST_LAG.observe(max(0.0, time.time() - RECORD_HEAD.unpack_from(records)[1] / 1e6))
            self.apply(link, records)
        elif body == "hello":
            link.restarted = bool(link.epoch) and link.epoch != message.hello.shard_epoch
            link.epoch = message.hello.shard_epoch
            link.connected = True
            link.lost_since = None
            SHARDS_UP.set(sum(1 for other in self.links if other.connected))
            if link.restarted:
                log.warning("shard restarted", extra={"shard": link.shard_id})
            link.status = None  # live or not: its first status, right after the snapshot, says
        elif body == "snapshot":
            snapshot = message.snapshot
            self._set_instruments(link, {proto_wire_key(i.key): i.mode for i in snapshot.instruments}, replace=True)
            self.apply_snapshot(link, snapshot.packets.records)
        elif body == "instruments_change":
            change = message.instruments_change
            self._set_instruments(link, {proto_wire_key(i.key): i.mode for i in change.upserted}, replace=False)
            self._remove_instruments(link, [proto_wire_key(k) for k in change.removed])
        elif body == "status":
            status = message.status
            if link.status is not None and status.reported_at.ToNanoseconds() < link.status.reported_at.ToNanoseconds():
                return  # queued at a state change, overtaken by a periodic status taken since
            link.status = status
            self._update_upstream(link)

    def _set_instruments(self, link: ShardLink, modes: dict[int, int], *, replace: bool) -> None:
        if replace:
            self._remove_instruments(link, list(link.instruments - modes.keys()))
        subscribed: list[Instrument] = []
        moved: dict[Outage | None, list[Instrument]] = {}  # by the outage they leave (None: a live shard)
        for key, mode in modes.items():
            instrument = self.instrument(key)
            if not instrument.mode and instrument.subscribers:
                subscribed.append(instrument)
            previous = instrument.shard_id
            if previous != link.shard_id:
                left = self._left_stale.pop(key, None)
                outage = self._outage_of(previous) if previous is not None else left[1] if left else None
                if (outage is None) != (link.outage is None) and instrument.subscribers:
                    moved.setdefault(outage, []).append(instrument)
            instrument.mode = mode
            instrument.shard_id = link.shard_id
            link.instruments.add(key)
        for left_outage, instruments in moved.items():
            self._moved(link, instruments, left_outage)
        self._status_changed(subscribed)

    def _remove_instruments(self, link: ShardLink, keys: list[int]) -> None:
        unsubscribed: list[Instrument] = []
        for key in keys:
            link.instruments.discard(key)
            instrument = self.instruments.get(key)
            if instrument is None:
                continue
            if instrument.source is not None and instrument.source[0] == link.shard_id:
                instrument.source = None  # another shard (a move) may take over the numbering
            if instrument.shard_id == link.shard_id:
                instrument.mode = 0
                instrument.shard_id = None
                if link.outage is not None:
                    self._left_stale[key] = (link.shard_id, link.outage)
                if instrument.subscribers:
                    unsubscribed.append(instrument)
                else:
                    del self.instruments[key]
                    self._left_stale.pop(key, None)
        self._status_changed(unsubscribed)

    @staticmethod
    def _status_changed(instruments: list[Instrument]) -> None:
        for instrument in instruments:
            for subscriber in instrument.subscribers:
                subscriber.status_changed(instrument)

    # -- upstream status ----------------------------------------------------------------------

    def _link(self, shard_id: int) -> ShardLink | None:
        return self.links[shard_id] if 0 <= shard_id < len(self.links) else None

    def _outage_of(self, shard_id: int) -> Outage | None:
        link = self._link(shard_id)
        return link.outage if link is not None else None

    def outage(self, key: int) -> Outage | None:
        """Why the instrument's values are stale, or None while they are live (or it has no shard)."""
        instrument = self.instruments.get(key)
        if instrument is None or instrument.shard_id is None:
            return None
        return self._outage_of(instrument.shard_id)

    def publish_stale(self) -> None:
        """Sets the stale-instruments gauge from the outages as announced (every cause, zeros too)."""
        counts = dict.fromkeys(_STALE_REASONS.values(), 0)
        for link in self.links:
            if link.outage is not None and link.outage.cause in _STALE_REASONS:
                counts[_STALE_REASONS[link.outage.cause]] += len(link.instruments)
        for _shard, outage in self._left_stale.values():
            if outage.cause in _STALE_REASONS:
                counts[_STALE_REASONS[outage.cause]] += 1
        for reason, count in counts.items():
            STALE.labels(reason).set(count)

    def _lost(self, link: ShardLink, detail: str) -> None:
        if link.connected:
            link.connected = False
            SHARDS_UP.set(sum(1 for other in self.links if other.connected))
        if link.lost_since is None:
            link.lost_since = time.time()
        link.lost_detail = detail
        self._update_upstream(link)

    def _update_upstream(self, link: ShardLink) -> None:
        """Compares the link's outage with what terminals were told, and tells them the change."""
        now: Outage | None
        if not link.connected:
            now = upstream.unreachable(link.shard_id, link.lost_detail, link.lost_since or time.time())
        elif link.status is None:
            return  # a new shard stream, whose first status is on its way
        else:
            now = upstream.reported(link.status)
        before = link.outage
        if now is None:
            if before is not None:
                self._restored(link, before)
            return
        if before is not None:
            now = replace(now, since=before.since)  # one outage: it began when it was first announced
        link.outage = now
        if before is None or now.worse_than(before):
            log.warning(
                "shard instruments stale",
                extra={"shard": link.shard_id, "cause": feed_pb2.UpstreamCause.Name(now.cause), "reason": now.reason},
            )
            upstream.interrupted(link.shard_id, self._followed(link.instruments), now)

    def _restored(self, link: ShardLink, outage: Outage) -> None:
        link.outage = None
        restarted, link.restarted = link.restarted, False
        log.info("shard instruments live again", extra={"shard": link.shard_id})
        if outage.cause == feed_pb2.UPSTREAM_CAUSE_SHARD_UNREACHABLE:
            reason = "shard stream restored"
        else:
            reason = "broker connection restored and resubscribed"
        upstream.announce(
            link.shard_id,
            self._followed(link.instruments),
            feed_pb2.UPSTREAM_STATE_RESTORED,
            outage,
            cause=feed_pb2.UPSTREAM_CAUSE_UNSPECIFIED,
            reason=reason,
            restarted=restarted,
        )
        for key in [k for k, (shard_id, _) in self._left_stale.items() if shard_id == link.shard_id]:
            del self._left_stale[key]

    def _moved(self, link: ShardLink, instruments: list[Instrument], left: Outage | None) -> None:
        """Instruments that moved to `link` from a down shard (live again) or, rarely, from a
        live one to a down one (stale now)."""
        if left is not None:
            reason = f"moved to shard {link.shard_id}, whose connection is live"
            upstream.announce(
                link.shard_id,
                instruments,
                feed_pb2.UPSTREAM_STATE_RESTORED,
                left,
                cause=feed_pb2.UPSTREAM_CAUSE_MOVED,
                reason=reason,
            )
        elif link.outage is not None:
            upstream.interrupted(link.shard_id, instruments, link.outage)

    def _followed(self, keys: set[int]) -> list[Instrument]:
        instruments = self.instruments
        return [i for k in keys if (i := instruments.get(k)) is not None and i.subscribers]

    # -- the hot path -------------------------------------------------------------------------

    def apply(self, link: ShardLink, records: bytes) -> None:
        """Numbers each packet for terminals and fans its new value out to the streams that
        want it. Packets stay raw here: a value is decoded and encoded only when a stream
        takes it, once per mode."""
        instruments = self.instruments
        unpack_record = RECORD_HEAD.unpack_from
        record_head_size, record_header_size = RECORD_HEAD.size, RECORD_HEADER.size
        publish = self._publish
        source_id = (link.shard_id, link.epoch)
        size = len(records)
        offset = 0
        applied = 0
        while offset + record_head_size <= size:  # a record header and a packet header
            sequence, received_us, head = unpack_record(records, offset)
            start = offset + record_header_size
            code = head & 0xFF  # protocol.HEAD: code | length << 8 | key << 24
            length = (head >> 8) & 0xFFFF
            if PACKET_SIZES.get(code) != length or start + length > size:
                self.errors.add(
                    f"shard {link.shard_id}: record of code {code} and length {length} at offset {start} of {size}"
                )
                return  # the framing is lost; the rest of this message is unreadable
            offset = start + length
            if code not in _VALUE_CODES:
                continue  # a disconnect: the shard reports it through its status
            key = head >> 24
            packet = records[start:offset]
            instrument = instruments.get(key)
            if instrument is None:
                instrument = self.instrument(key)
            if instrument.source != source_id and not self._follow_source(instrument, link, sequence):
                continue
            number = instrument.offset + sequence
            latest = instrument.latest
            if latest is None:
                value = Value(
                    instrument,
                    number,
                    received_us,
                    packet if code in TICK_CODES else None,
                    packet if code == OI_CODE else None,
                    packet if code == PREV_CLOSE_CODE else None,
                )
            elif number <= latest.sequence:
                continue  # already applied
            elif code in TICK_CODES:
                value = Value(instrument, number, received_us, packet, latest.oi, latest.prev)
            elif code == OI_CODE:
                value = Value(instrument, number, received_us, latest.tick, packet, latest.prev)
            else:
                value = Value(instrument, number, received_us, latest.tick, latest.oi, packet)
            publish(instrument, key, value)
            applied += 1
        if offset != size:
            self.errors.add(f"shard {link.shard_id}: {size - offset} stray bytes at the end of a message")
        PACKETS.inc(applied)

    def apply_snapshot(self, link: ShardLink, records: bytes) -> None:
        """A shard's last values, as it sends them on every (re)connect. Each part of an
        instrument (tick, OI, previous close) carries the instrument's latest number, so the
        parts merge into one value; applied one by one, the first part would take the number
        and the rest would be dropped as already applied."""
        merged: dict[int, list[Any]] = {}  # key -> [sequence, received µs, tick, oi, prev]
        read = 0
        for sequence, received_us, packet in iter_records(records):
            read += RECORD_HEADER.size + len(packet)
            code, length, key = split_head(HEAD.unpack_from(packet)[0])
            if PACKET_SIZES.get(code) != length:
                self.errors.add(f"shard {link.shard_id}: snapshot record of code {code} and length {length}")
                return
            if code in _SNAPSHOT_PART:
                parts = merged.setdefault(key, [sequence, received_us, None, None, None])
                parts[0], parts[1] = max(parts[0], sequence), max(parts[1], received_us)
                parts[_SNAPSHOT_PART[code]] = packet
        if read != len(records):
            self.errors.add(f"shard {link.shard_id}: {len(records) - read} stray bytes at the end of a snapshot")
        for key, (sequence, received_us, tick, oi, prev) in merged.items():
            instrument = self.instrument(key)
            if instrument.source != (link.shard_id, link.epoch) and not self._follow_source(instrument, link, sequence):
                continue
            number = instrument.offset + sequence
            latest = instrument.latest
            if latest is not None:
                if number <= latest.sequence:
                    continue  # nothing new since this gateway last heard from the shard
                tick, oi, prev = tick or latest.tick, oi or latest.oi, prev or latest.prev
            self._publish(instrument, key, Value(instrument, number, received_us, tick, oi, prev))

    @staticmethod
    def _publish(instrument: Instrument, key: int, value: Value) -> None:
        """Makes `value` the instrument's latest and tells the streams that want it."""
        instrument.latest = value
        instrument.history.append(value)
        for subscriber in instrument.subscribers:
            subscriber.mark(key, value.sequence)

    def _follow_source(self, instrument: Instrument, link: ShardLink, sequence: int) -> bool:
        """Whether this shard's numbering now applies to the instrument: False while the old
        shard of a move still owns it. A new source continues after the last value, skipping
        one number so that the discontinuity shows as a gap."""
        old = instrument.source
        # A move's old shard keeps the numbering until it lets go, unless it is down: a down
        # shard sends nothing, and may not be able to let go (it is unreachable).
        if (
            old is not None
            and old[0] != link.shard_id
            and (instrument.shard_id != link.shard_id or self._outage_of(old[0]) is None)
        ):
            return False
        instrument.offset = instrument.latest.sequence + 2 - sequence if instrument.latest is not None else 0
        instrument.source = (link.shard_id, link.epoch)
        return True

    # -- status ---------------------------------------------------------------------------------

    def statuses(self) -> list[feed_pb2.ShardStatus]:
        result = []
        for link in self.links:
            status = feed_pb2.ShardStatus()
            if link.status is not None:
                status.CopyFrom(link.status)
            status.shard_id = link.shard_id
            status.shard_epoch = link.epoch
            status.reachable = link.connected
            result.append(status)
        return result
