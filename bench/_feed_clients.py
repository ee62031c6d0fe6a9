"""Client processes of bench.feed (run only by it).

1. Feed readers, one process per run: ``python -m bench._feed_clients ingest SPEC_JSON``.
   SPEC_JSON names the kind, the feed URL, the instruments, the window and where to write
   the result (a JSON file; the process's stdout/stderr go to a log file). Kinds:

   - ``raw``: a plain socket that walks WebSocket frame headers (costs next to nothing: the
     simulator's own ceiling);
   - ``websockets``: ``websockets.asyncio.client.connect`` + ``async for`` counting bytes,
     with ``compression`` None or "deflate" (websockets' default: the offer is made and the
     server decides);
   - ``picows``: a bare picows listener counting payload bytes;
   - ``ours``: the shard's hot path, ``BrokerConnection`` + ``Ingest`` over picows, records
     handed on per read burst and counted (packets applied to the last-value cache);
   - ``dhanhq``: the official client, ``MarketFeed.get_data()`` in a loop (its URL constant
     pointed at the simulator), counting packets decoded.

   ``python -m bench._feed_clients replay SPEC_JSON`` is the replay feed: it serves frames
   the ``raw`` kind recorded from the simulator, in a loop, to one client at a time.

   Each subscribes FULL, lets the subscription burst pass (WARMUP seconds after the first
   data frame), then counts over a window of ``seconds`` and reports frames, bytes, its own
   CPU seconds (``time.process_time``) and the simulator's (``/proc/<pid>/stat``) over the
   window. Every run stops by itself (hard deadline) and closes its connection.

2. Terminals, for the end-to-end run: ``terminal_child(conn, spec)`` is a multiprocessing
   (spawn) target holding many ``StreamTicks`` streams over grpc.aio, driven by commands on
   the pipe: ("window", name) starts a measurement window, ("end", None) ends it and answers
   its figures, ("stall", None) opens the stalled stream (it reads its snapshot and then
   nothing), ("resume", None) makes it read again and answers what it got, ("stop", None)
   ends the process. Latency of a tick = its receipt here - the send
   time the simulator stamped in its volume field (UTC ms of the day), counted only for a
   tick whose stamp changed (a new Full packet); sequence gaps are counted per instrument.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import uvloop

from bench.children import cpu_seconds, run_spawned

MS_PER_DAY = 86_400_000
WARMUP = 1.0  # after the first data frame: the prev-close + snapshot burst of a subscription
HARD_LIMIT = 40.0  # a reader process never lives longer than this many seconds past its window


def _segment_code(name: str) -> int:
    from services.common.instruments import SEGMENT_WIRE_CODES

    return SEGMENT_WIRE_CODES[name]


# --- 1. feed readers ----------------------------------------------------------------------


class Window:
    """Counters snapshotted at the start and end of the measured window."""

    def __init__(self, seconds: float, sim_pid: int) -> None:
        self.seconds = seconds
        self.sim_pid = sim_pid
        self.frames = 0
        self.bytes = 0
        self.packets = 0
        self.first_frame_at: float | None = None
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.sync: Any = None  # called before each snapshot, if set

    def snap(self) -> dict[str, float]:
        if self.sync is not None:
            self.sync()
        return {
            "t": time.perf_counter(),
            "cpu": time.process_time(),
            "sim_cpu": cpu_seconds(self.sim_pid),
            "frames": self.frames,
            "bytes": self.bytes,
            "packets": self.packets,
        }

    def result(self) -> dict[str, Any]:
        if not self.end:
            raise RuntimeError(f"the window never ended (first frame at {self.first_frame_at}, frames {self.frames})")
        d = {k: self.end[k] - self.start[k] for k in self.end}
        return {
            "seconds": d["t"],
            "frames": d["frames"],
            "bytes": d["bytes"],
            "packets": d["packets"],
            "cpu": d["cpu"],
            "sim_cpu": d["sim_cpu"],
        }

    async def run_async(self, first_frame: asyncio.Event) -> None:
        await asyncio.wait_for(first_frame.wait(), 30)
        await asyncio.sleep(WARMUP)
        self.start = self.snap()
        await asyncio.sleep(self.seconds)
        self.end = self.snap()


def _raw(spec: dict[str, Any], window: Window) -> None:
    from services.dhan import FeedMode, build_subscribe_messages

    host, port = "127.0.0.1", spec["port"]
    sock = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {spec['path']} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    data = bytearray(buf.split(b"\r\n\r\n", 1)[1])
    for text in build_subscribe_messages([tuple(i) for i in spec["instruments"]], FeedMode.FULL):
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
        sock.sendall(header + mask + masked)
    sock.settimeout(1.0)
    deadline = time.perf_counter() + 30 + WARMUP + window.seconds
    phase = 0  # 0: before the first frame, 1: warm-up, 2: window, 3: done
    due = 0.0
    # Optionally records the window's frames (whole frames, as sent) for the replay feed.
    record = open(spec["record_path"], "wb") if spec.get("record_path") else None
    record_left = int(spec.get("record_bytes", 0))
    while phase < 3 and time.perf_counter() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
        pos, n = 0, len(data)
        frames = nbytes = 0
        while pos + 2 <= n:
            length = data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if pos + 4 > n:
                    break
                length = data[pos + 2] << 8 | data[pos + 3]
                head = 4
            elif length == 127:
                raise RuntimeError("unexpected 64-bit frame length")
            if pos + head + length > n:
                break
            if data[pos] & 0x0F == 2:
                frames += 1
                nbytes += length
            pos += head + length
        if record is not None and phase == 2 and record_left > 0:
            record.write(data[:pos])
            record_left -= pos
        del data[:pos]
        window.frames += frames
        window.bytes += nbytes
        window.packets += frames
        now = time.perf_counter()
        if phase == 0 and window.frames:
            window.first_frame_at, phase, due = now, 1, now + WARMUP
        elif phase == 1 and now >= due:
            window.start, phase, due = window.snap(), 2, now + window.seconds
        elif phase == 2 and now >= due:
            window.end, phase = window.snap(), 3
    sock.close()
    if record is not None:
        record.close()


async def _websockets(spec: dict[str, Any], window: Window) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    from services.dhan import FeedMode, build_subscribe_messages

    compression = spec.get("compression")
    first = asyncio.Event()
    extensions = ""
    async with connect(spec["url"], compression=compression, max_size=1 << 20, open_timeout=10, close_timeout=2) as ws:
        if ws.response is not None:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        for text in build_subscribe_messages([tuple(i) for i in spec["instruments"]], FeedMode.FULL):
            await ws.send(text)
        timer = asyncio.create_task(window.run_async(first))

        async def read() -> None:
            async for message in ws:
                window.frames += 1
                window.bytes += len(message)
                if not first.is_set():
                    first.set()

        reader = asyncio.create_task(read())
        await asyncio.wait([timer, reader], return_when=asyncio.FIRST_COMPLETED, timeout=30 + WARMUP + window.seconds)
        reader.cancel()
        window.packets = window.frames  # one packet per frame
        if window.end:
            window.end["packets"] = window.end["frames"]
            window.start["packets"] = window.start["frames"]
        timer.cancel()
    return {"extensions": extensions}


async def _picows(spec: dict[str, Any], window: Window) -> dict[str, Any]:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    from services.dhan import FeedMode, build_subscribe_messages

    first = asyncio.Event()
    BINARY = WSMsgType.BINARY

    class Listener(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == BINARY:
                window.frames += 1
                window.bytes += frame.payload_size
                if not first.is_set():
                    first.set()

    transport, _ = await ws_connect(Listener, spec["url"], websocket_handshake_timeout=10, enable_auto_pong=True)
    for text in build_subscribe_messages([tuple(i) for i in spec["instruments"]], FeedMode.FULL):
        transport.send(WSMsgType.TEXT, text.encode())
    try:
        await asyncio.wait_for(window.run_async(first), 30 + WARMUP + window.seconds)
    finally:
        transport.disconnect()
    window.start["packets"], window.end["packets"] = window.start["frames"], window.end["frames"]
    return {}


async def _ours(spec: dict[str, Any], window: Window) -> dict[str, Any]:
    from services.dhan import FeedMode, build_subscribe_messages
    from services.feed.shard.broker import BrokerConnection
    from services.feed.shard.cache import Ingest, LastValues

    first = asyncio.Event()
    ingest = Ingest(LastValues(), lambda reason: None)
    flushes = [0]

    def on_records(blob: bytes, count: int) -> None:
        # What ShardRuntime._on_records gets: one blob per read burst. Counted, not published.
        flushes[0] += 1
        window.packets += count
        if not first.is_set():
            first.set()

    connection = BrokerConnection(ingest, on_records)
    await connection.open(spec["url"])
    for text in build_subscribe_messages([tuple(i) for i in spec["instruments"]], FeedMode.FULL):
        connection.send_text(text)

    def sync() -> None:  # frames from the ingest's own counter, at snapshot time
        window.frames = ingest.counters.frames

    window.sync = sync
    try:
        await asyncio.wait_for(window.run_async(first), 30 + WARMUP + window.seconds)
    finally:
        connection.close()
    errors = ingest.counters.protocol_errors
    window.end["bytes"] = window.start["bytes"] = 0  # not counted on this path
    return {
        "packets_per_flush": ingest.counters.packets / max(1, flushes[0]),
        "protocol_errors": errors,
        "cached": len(ingest.cache.ticks),
    }


def _dhanhq(spec: dict[str, Any], window: Window) -> dict[str, Any]:
    from dhanhq import DhanContext, MarketFeed

    MarketFeed.market_feed_wss = spec["base_url"]  # the bench's only change: where it connects
    instruments = [(_segment_code(seg), str(sid), MarketFeed.Full) for seg, sid in spec["instruments"]]
    feed = MarketFeed(DhanContext("1000000001", "bench"), instruments, version="v2")
    kinds: Counter[str] = Counter()
    try:
        feed.run_forever()  # connects and subscribes, as the official examples do
        get_data = feed.get_data
        deadline = time.perf_counter() + 30 + WARMUP + window.seconds
        phase, due = 0, 0.0
        while phase < 3:
            data = get_data()
            window.frames += 1
            if data:
                window.packets += 1
                if window.packets & 0x3FF == 0:
                    kinds[data.get("type", "?")] += 1
            now = time.perf_counter()
            if phase == 0:
                window.first_frame_at, phase, due = now, 1, now + WARMUP
            elif phase == 1 and now >= due:
                window.start, phase, due = window.snap(), 2, now + window.seconds
            elif phase == 2 and now >= due:
                window.end, phase = window.snap(), 3
            if now > deadline:
                break
    finally:
        # No close handshake: the feed keeps streaming and nobody reads it any more, so
        # websockets' close() would wait for its timeout. Drop the TCP connection instead.
        if feed.ws is not None:
            feed.ws.transport.abort()
            feed.loop.run_until_complete(asyncio.sleep(0.05))
        feed.loop.close()
    return {"sampled_types": dict(kinds)}


def replay_main(spec: dict[str, Any]) -> None:
    """A feed that replays recorded frames as fast as the client takes them: the WebSocket
    handshake, then the recording in a loop with sendall (a kernel copy; next to no CPU),
    one client at a time; whatever the client sends is read and ignored. Stops after
    ``lifetime`` seconds or on SIGTERM."""
    import hashlib
    import signal
    import threading

    recording = open(spec["record_path"], "rb").read()
    if not recording:
        raise RuntimeError("empty recording")
    chunks = [recording[i : i + (1 << 20)] for i in range(0, len(recording), 1 << 20)]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        json.dumps({"msg": "replay listening", "ws_port": server.getsockname()[1], "bytes": len(recording)}), flush=True
    )
    deadline = time.monotonic() + spec["lifetime"]
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        conn.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            part = conn.recv(4096)
            if not part:
                break
            request += part
        key = next(
            (
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            ),
            b"",
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        conn.sendall(
            f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        gone = threading.Event()

        def drain(c: socket.socket = conn, g: threading.Event = gone) -> None:
            c.settimeout(0.5)
            while not g.is_set():
                try:
                    if not c.recv(65536):
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            g.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        conn.settimeout(5)
        try:
            while not gone.is_set() and not stop.is_set() and time.monotonic() < deadline:
                for chunk in chunks:
                    conn.sendall(chunk)
        except OSError:
            pass
        gone.set()
        reader.join(2)
        conn.close()
    server.close()


def ingest_main(spec: dict[str, Any]) -> None:
    window = Window(spec["seconds"], spec["sim_pid"])
    kind = spec["kind"]
    extra: dict[str, Any] = {}
    if kind == "raw":
        _raw(spec, window)
    elif kind == "dhanhq":
        extra = _dhanhq(spec, window)
    else:
        runner = {"websockets": _websockets, "picows": _picows, "ours": _ours}[kind]
        extra = asyncio.run(runner(spec, window))
    result = {**window.result(), **extra}
    with open(spec["result_path"] + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(spec["result_path"] + ".tmp", spec["result_path"])


# --- 2. terminals --------------------------------------------------------------------------


class Tally:
    """What a set of streams received during one window."""

    def __init__(self) -> None:
        self.ticks = 0
        self.stamped = 0  # ticks whose send stamp changed (a new Full packet): latency counted
        self.gaps = 0  # missing sequence numbers, summed over instruments
        self.gap_events = 0
        self.batches = 0
        self.events: Counter[str] = Counter()
        self.latency = Counter()  # 0.1 ms buckets: send stamp -> receipt here
        self.shard_part = Counter()  # 0.1 ms buckets: shard receipt (receive_time_micros) -> receipt here, sampled
        self.sim_part = Counter()  # 0.1 ms buckets: send stamp -> shard receipt, sampled
        self.gateway_part = Counter()  # 0.1 ms buckets: shard receipt -> the batch's sent_at, sampled
        self.transit = Counter()  # 0.1 ms buckets: a batch's sent_at -> receipt here, per batch

    def summary(self) -> dict[str, Any]:
        return {
            "ticks": self.ticks,
            "stamped": self.stamped,
            "gaps": self.gaps,
            "gap_events": self.gap_events,
            "batches": self.batches,
            "events": dict(self.events),
            "latency": dict(self.latency),
            "shard_part": dict(self.shard_part),
            "sim_part": dict(self.sim_part),
            "gateway_part": dict(self.gateway_part),
            "transit": dict(self.transit),
        }


async def _terminals(conn: Any, spec: dict[str, Any]) -> None:
    import grpc
    from dataserver.common.v1 import common_pb2
    from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc

    loop = asyncio.get_running_loop()
    tally = Tally()
    # Per instrument, over the whole life of the process: last sequence and last stamp.
    last: dict[tuple[int, int], list[int]] = {}
    counts = {"streams_open": 0, "errors": Counter()}
    wall = time.time

    def key_proto(seg: int, sid: int) -> Any:
        return common_pb2.InstrumentKey(exchange_segment=seg, security_id=sid)  # type: ignore[arg-type]

    def request(keys: Sequence[Sequence[int]]) -> Any:
        return feed_pb2.StreamTicksRequest(
            instruments=feed_pb2.InstrumentList(keys=[key_proto(s, i) for s, i in keys]), mode=common_pb2.FEED_MODE_FULL
        )

    def on_ticks(ticks: Any, snapshot: bool, sent_ms: float = 0.0) -> None:
        nonlocal tally
        t = tally
        now_ms = wall() * 1000.0
        today = now_ms % MS_PER_DAY
        if sent_ms:
            t.transit[int((now_ms - sent_ms) * 10)] += 1
        for tick in ticks:
            key = tick.key
            k = (key.exchange_segment, key.security_id)
            seq = tick.sequence
            volume = tick.volume
            state = last.get(k)
            if state is None:
                last[k] = [seq, volume]
                continue
            previous, stamp = state
            if seq <= previous:
                continue  # a snapshot repeating a value already seen
            if not snapshot:
                t.ticks += 1
                if seq != previous + 1:
                    t.gaps += seq - previous - 1
                    t.gap_events += 1
                if volume != stamp:
                    t.stamped += 1
                    latency = (today - volume) % MS_PER_DAY
                    t.latency[int(latency * 10)] += 1
                    if t.stamped & 15 == 0:  # the split, sampled
                        shard_ms = (tick.receive_time_micros / 1000.0) % MS_PER_DAY
                        t.shard_part[int(((today - shard_ms) % MS_PER_DAY) * 10)] += 1
                        t.sim_part[int(((shard_ms - volume) % MS_PER_DAY) * 10)] += 1
                        if sent_ms:
                            t.gateway_part[int(((sent_ms % MS_PER_DAY - shard_ms) % MS_PER_DAY) * 10)] += 1
            state[0] = seq
            state[1] = volume

    async def stream(stub: Any, keys: Sequence[Sequence[int]]) -> None:
        call = stub.StreamTicks(request(keys))
        counts["streams_open"] += 1
        try:
            async for response in call:
                body = response.WhichOneof("body")
                if body == "batch":
                    tally.batches += 1
                    batch = response.batch
                    sent = batch.sent_at
                    on_ticks(batch.ticks, False, sent.seconds * 1000.0 + sent.nanos / 1e6)
                elif body == "snapshot":
                    on_ticks(response.snapshot.ticks, True)
                else:
                    tally.events[body if body != "event" else response.event.WhichOneof("event")] += 1
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                counts["errors"][error.code().name] += 1
        finally:
            counts["streams_open"] -= 1

    options = [("grpc.max_receive_message_length", 32 * 1024 * 1024)]
    channels = [grpc.aio.insecure_channel(spec["address"], options=options) for _ in range(spec["channels"])]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 10)
    tasks = [
        asyncio.create_task(stream(feed_pb2_grpc.GatewayServiceStub(channels[n % len(channels)]), keys))
        for n, keys in enumerate(spec["streams"])
    ]

    # The stalled stream: its own channel; opened by "stall", reads its snapshot, then
    # nothing until "resume".
    stalled: dict[str, Any] = {}

    async def stall() -> dict[str, Any]:
        # A small fixed HTTP/2 window (no BDP growth), so the gateway is blocked by this
        # reader within ~16 KB instead of buffering megabytes into the client.
        channel = grpc.aio.insecure_channel(
            spec["address"], options=[*options, ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)]
        )
        call = feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(request(spec["stalled"]))
        stalled.update(channel=channel, call=call)
        first = await asyncio.wait_for(call.read(), 20)
        return {"snapshot_ticks": len(first.snapshot.ticks) if first.WhichOneof("body") == "snapshot" else -1}

    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    conn.send({"event": "ready", "pid": os.getpid(), "streams": len(tasks)})
    window_started = time.perf_counter()
    cpu_started = time.process_time()
    try:
        while True:
            await asyncio.wait_for(readable.wait(), spec["lifetime"])
            readable.clear()
            while conn.poll():
                command, arg = conn.recv()
                if command == "window":
                    tally = Tally()
                    window_started = time.perf_counter()
                    cpu_started = time.process_time()
                    conn.send({"event": "window", "name": arg})
                elif command == "end":
                    summary = tally.summary()
                    summary.update(
                        seconds=time.perf_counter() - window_started,
                        cpu=time.process_time() - cpu_started,
                        streams_open=counts["streams_open"],
                        errors=dict(counts["errors"]),
                        instruments=len(last),
                    )
                    conn.send({"event": "end", "summary": summary})
                elif command == "stall":
                    conn.send({"event": "stalled", "summary": await stall()})
                elif command == "resume":
                    conn.send({"event": "resumed", "summary": await _drain_stalled(stalled.get("call"))})
                elif command == "stop":
                    return
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(conn.fileno())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if stalled:
            stalled["call"].cancel()
        for channel in [*channels, *([stalled["channel"]] if stalled else [])]:
            await channel.close(grace=None)


async def _drain_stalled(call: Any) -> dict[str, Any]:
    """Reads what the stalled stream has, for a short while: the batches the gateway held for
    it and the slow-consumer warnings (with their pending_instruments) it queued."""
    import grpc

    if call is None:
        return {}
    out: dict[str, Any] = {"batches": 0, "ticks": 0, "first_batch_ticks": None, "warnings": [], "error": ""}
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < 3.0:
            try:
                response = await asyncio.wait_for(call.read(), 1.0)
            except TimeoutError:
                break
            if response is grpc.aio.EOF:
                break
            body = response.WhichOneof("body")
            if body == "batch":
                out["batches"] += 1
                out["ticks"] += len(response.batch.ticks)
                if out["first_batch_ticks"] is None:
                    out["first_batch_ticks"] = len(response.batch.ticks)
            elif body == "event" and response.event.WhichOneof("event") == "slow_consumer":
                w = response.event.slow_consumer
                out["warnings"].append(
                    {
                        "lag_s": w.lag.seconds + w.lag.nanos / 1e9,
                        "conflated": w.conflated_updates,
                        "pending": w.pending_instruments,
                    }
                )
    except grpc.aio.AioRpcError as error:
        out["error"] = f"{error.code().name}: {error.details()}"
    return out


def terminal_child(conn: Any, log_path: str, spec: dict[str, Any]) -> None:
    """multiprocessing (spawn) target: logs to a file, reports errors on the pipe."""
    run_spawned(conn, log_path, lambda: uvloop.run(_terminals(conn, spec)))  # uvloop, as the services run


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("ingest", "replay"):
        sys.exit("usage: python -m bench._feed_clients ingest|replay SPEC_JSON")
    (ingest_main if argv[0] == "ingest" else replay_main)(json.loads(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
