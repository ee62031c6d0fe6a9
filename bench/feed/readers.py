"""Feed readers of the ingest part, one process per run:
``python -m bench.feed.readers SPEC_JSON``. SPEC_JSON names the kind, the feed URL, the
instruments, the window and where to write the result (a JSON file; the process's output
goes to a log file). Kinds: ``raw`` (a plain socket walking frame headers: the feed's own
ceiling; it can record the frames for bench.feed.replay), ``websockets`` (compression None
or "deflate"), ``picows``, ``ours`` (the shard's BrokerConnection + Ingest over picows) and
``dhanhq`` (the official ``MarketFeed.get_data()`` loop, its URL pointed at the feed).

Each subscribes FULL, lets the subscription burst pass (WARMUP seconds after the first data
frame), then counts over a window of ``seconds`` and reports frames, bytes, its own CPU and
the feed's (``/proc/<pid>/stat``) over the window. Every run stops by itself (hard deadline)
and closes its connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

from bench.children import cpu_seconds
from services import dhan as codec

WARMUP = 1.0  # after the first data frame: the prev-close + snapshot burst of a subscription


def _segment_code(name: str) -> int:
    from services.common.instruments import SEGMENT_WIRE_CODES

    return SEGMENT_WIRE_CODES[name]


def _subscribe_messages(spec: dict[str, Any]) -> list[str]:
    return codec.build_subscribe_messages([(str(s), int(i)) for s, i in spec["instruments"]], codec.FeedMode.FULL)


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
    for text in _subscribe_messages(spec):
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
        sock.sendall(header + mask + masked)
    sock.settimeout(1.0)
    # Optionally records the window's frames (whole frames, as sent) for the replay feed.
    with contextlib.ExitStack() as files:
        record = files.enter_context(open(spec["record_path"], "wb")) if spec.get("record_path") else None
        _read_raw(sock, data, record, int(spec.get("record_bytes", 0)), window)
    sock.close()


def _read_raw(sock: socket.socket, data: bytearray, record: Any, record_left: int, window: Window) -> None:
    """Walks frame headers until the window has ended, counting binary frames."""
    deadline = time.perf_counter() + 30 + WARMUP + window.seconds
    phase = 0  # 0: before the first frame, 1: warm-up, 2: window, 3: done
    due = 0.0
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


async def _websockets(spec: dict[str, Any], window: Window) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    compression = spec.get("compression")
    first = asyncio.Event()
    extensions = ""
    async with connect(spec["url"], compression=compression, max_size=1 << 20, open_timeout=10, close_timeout=2) as ws:
        if ws.response is not None:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        for text in _subscribe_messages(spec):
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

    first = asyncio.Event()
    BINARY = WSMsgType.BINARY

    class Listener(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == BINARY:
                window.frames += 1
                window.bytes += frame.payload_size
                if not first.is_set():
                    first.set()

    transport, _ = await ws_connect(Listener, spec["url"], websocket_handshake_timeout=10, enable_auto_pong=True)
    for text in _subscribe_messages(spec):
        transport.send(WSMsgType.TEXT, text.encode())
    try:
        await asyncio.wait_for(window.run_async(first), 30 + WARMUP + window.seconds)
    finally:
        transport.disconnect()
    window.start["packets"], window.end["packets"] = window.start["frames"], window.end["frames"]
    return {}


async def _ours(spec: dict[str, Any], window: Window) -> dict[str, Any]:
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
    for text in _subscribe_messages(spec):
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


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m bench.feed.readers SPEC_JSON")
    ingest_main(json.loads(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
