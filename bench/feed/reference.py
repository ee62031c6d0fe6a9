"""The reference fan-out of the end-to-end part: the smallest Python pipeline doing the
gateway's job, to compare the system under test with.

One process (uvloop, as the services run) reads the simulator's frames with picows over N
connections of at most 5,000 instruments each (the simulator's limit per connection, as
Dhan's), subscribed FULL to the instruments the shards follow. Each Full packet becomes the
`ticks` entry the gateway streams (services.feed.gateway.encoding.full_entry: the raw packet
unpacked and packed once; its volume, which holds the simulator's send stamp, is carried
through as the gateway carries it), with a per-instrument sequence and its receipt time, and
is appended to the one stream that wants it. A clock with the gateway's period and slices
releases each stream's entries as one pre-encoded TickBatch (the gateway's
STREAM_TICKS.batch, sent_at included), served as GatewayService.StreamTicks. No shards, no
decoding into objects, no last-value cache, history or conflation.

Started with the instruments of each connection (spec "groups"), and driven by commands on
its pipe (bench.feed.piped): ("connect", {"port"}) opens the connections and subscribes,
answering once each has its first frame; ("counters", None);
("disconnect", None); ("stop", None).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import uvloop

from bench.children import parent_commands, run_spawned
from services import dhan as codec

FULL_CODE = 8
CONNECT_SECONDS = 20.0
_HEAD = struct.Struct("<Q")  # code | length << 8 | key << 24 (services.feed.records)


class Sink:
    """One terminal stream: the entries waiting for its next batch."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.wake = asyncio.Event()


class Route:
    """Where an instrument's ticks go: its entry prefix, its last sequence, its stream."""

    __slots__ = ("prefix", "sequence", "sink")

    def __init__(self, prefix: bytes, sink: Sink) -> None:
        self.prefix = prefix
        self.sequence = 0
        self.sink = sink


class FanOut:
    """Frames in, batches out: the routes of every subscribed stream, and the clock."""

    def __init__(self) -> None:
        from services.feed.gateway.streams import CLOCK_SECONDS, SLICES

        self.routes: dict[int, Route] = {}
        self.period = float(os.environ.get("GATEWAY_BATCH_SECONDS", CLOCK_SECONDS))  # the gateway's own period
        self.slices: list[list[Sink]] = [[] for _ in range(SLICES)]
        self._assigned = 0
        self.counters = {"frames": 0, "packets": 0, "ticks_in": 0, "ticks_sent": 0, "batches": 0}

    def on_frame(self, payload: bytes) -> None:
        from services.feed.gateway.encoding import full_entry

        received_us = time.time_ns() // 1000
        counters = self.counters
        counters["frames"] += 1
        offset, size = 0, len(payload)
        while offset + 8 <= size:
            head = _HEAD.unpack_from(payload, offset)[0]
            length = (head >> 8) & 0xFFFF
            if length < 8:
                break
            counters["packets"] += 1
            route = self.routes.get(head >> 24) if head & 0xFF == FULL_CODE else None
            if route is not None:
                packet = payload if length == size else payload[offset : offset + length]
                route.sequence += 1
                sink = route.sink
                sink.entries.append(full_entry(route.prefix, route.sequence, received_us, packet, None))
                counters["ticks_in"] += 1
            offset += length

    def attach(self, keys: Sequence[Any]) -> Sink:
        """A new stream for these InstrumentKeys, on the next slice of the clock."""
        from services.common.keys import proto_wire_key
        from services.feed.gateway.encoding import full_entry_prefix, key_field

        sink = Sink()
        for key in keys:
            self.routes[proto_wire_key(key)] = Route(full_entry_prefix(key_field(key)), sink)
        self.slices[self._assigned % len(self.slices)].append(sink)
        self._assigned += 1
        return sink

    async def clock(self) -> None:
        """Each period/SLICES, wakes the streams of one slice that have entries waiting."""
        tick = self.period / len(self.slices)
        index = 0
        while True:
            await asyncio.sleep(tick)
            for sink in self.slices[index]:
                if sink.entries:
                    sink.wake.set()
            index = (index + 1) % len(self.slices)

    async def stream_ticks(self, request: Any, context: Any) -> AsyncGenerator[Any, None]:
        """StreamTicks: an empty snapshot, then a batch whenever the clock wakes the stream."""
        from dataserver.feed.v1 import feed_pb2

        from services.feed.gateway.streams import STREAM_TICKS

        sink = self.attach(list(request.instruments.keys))
        yield feed_pb2.StreamTicksResponse(snapshot=feed_pb2.TickSnapshot())
        while True:
            await sink.wake.wait()
            sink.wake.clear()
            entries, sink.entries = sink.entries, []
            if entries:
                self.counters["ticks_sent"] += len(entries)
                self.counters["batches"] += 1
                yield STREAM_TICKS.batch(entries, time.time_ns())


class Upstream:
    """The connections to the simulator."""

    def __init__(self, fanout: FanOut) -> None:
        self.fanout = fanout
        self.transports: list[Any] = []
        self.first_frames: list[asyncio.Event] = []

    async def connect(self, port: int, groups: Sequence[Sequence[Sequence[int]]]) -> dict[str, Any]:
        from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

        from services.common.instruments import PROTO_TO_SEGMENT

        on_frame = self.fanout.on_frame
        binary = WSMsgType.BINARY
        started = time.perf_counter()
        for n, group in enumerate(groups):
            first = asyncio.Event()
            self.first_frames.append(first)

            class Listener(WSListener):
                def on_ws_frame(self, transport: WSTransport, frame: WSFrame, first: asyncio.Event = first) -> None:
                    if frame.msg_type == binary:
                        on_frame(frame.get_payload_as_bytes())
                        first.set()

            url = f"ws://127.0.0.1:{port}/?version=2&token=bench&clientId=bench-reference-{n}&authType=2"
            transport, _ = await _refused_retry(lambda u=url, c=Listener: ws_connect(c, u, enable_auto_pong=True))
            self.transports.append(transport)
            pairs = [(PROTO_TO_SEGMENT[segment], security_id) for segment, security_id in group]
            for text in codec.build_subscribe_messages(pairs, codec.FeedMode.FULL):
                transport.send(WSMsgType.TEXT, text.encode())
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in self.first_frames)), CONNECT_SECONDS)
        return {"connections": len(groups), "seconds": time.perf_counter() - started}

    def disconnect(self) -> None:
        for transport in self.transports:
            transport.disconnect()
        self.transports.clear()
        self.first_frames.clear()


async def _refused_retry(connect: Any, seconds: float = CONNECT_SECONDS) -> Any:
    """`await connect()`, retried while the simulator refuses connections, within a bound."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await connect()
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)


def _server(fanout: FanOut) -> Any:
    """A gRPC server with only GatewayService.StreamTicks, taking pre-serialised batches as
    the gateway's does."""
    import grpc
    from dataserver.feed.v1 import feed_pb2

    def serialize(message: Any) -> bytes:
        return message if isinstance(message, bytes) else bytes(message.SerializeToString())

    handler = grpc.unary_stream_rpc_method_handler(
        fanout.stream_ticks, request_deserializer=feed_pb2.StreamTicksRequest.FromString, response_serializer=serialize
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 32 * 1024 * 1024),
            ("grpc.max_send_message_length", 32 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("dataserver.feed.v1.GatewayService", {"StreamTicks": handler}),)
    )
    return server


async def _reference(conn: Any, groups: Sequence[Sequence[Sequence[int]]], lifetime: float) -> None:
    fanout = FanOut()
    upstream = Upstream(fanout)
    server = _server(fanout)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    clock = asyncio.create_task(fanout.clock())
    conn.send({"event": "ready", "pid": os.getpid(), "address": f"127.0.0.1:{port}"})
    try:
        async for command, arg in parent_commands(conn, lifetime):
            if command == "connect":
                answer = await upstream.connect(arg["port"], groups)
                conn.send({"event": "connected", **answer})
            elif command == "counters":
                conn.send({"event": "counters", **fanout.counters})
            elif command == "disconnect":
                upstream.disconnect()
                conn.send({"event": "disconnected"})
    finally:
        upstream.disconnect()
        clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await clock
        await server.stop(grace=None)


def reference_child(conn: Any, log_path: str, spec: dict[str, Any]) -> None:
    """multiprocessing (spawn) target: logs to a file, reports errors on the pipe."""
    run_spawned(conn, log_path, lambda: uvloop.run(_reference(conn, spec["groups"], spec["lifetime"])))
