"""Throughput of the simulator: ``python -m services.feed.simulator.bench``.

Runs the simulator in this process (burst mode, caps raised) and N client processes,
each holding some connections that subscribe instruments of the master and count the
frames they receive for a while. Two client kinds:

- ``raw``: a bare socket that walks WebSocket frame headers, so the clients cost little
  and the figure is the simulator's own ceiling;
- ``websockets``: ``websockets.connect`` + ``codec.decode_frame`` per frame, like a real
  feed client (then the clients usually bound the rate on a 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence

from services.feed.codec import FeedMode, ProtocolErrors, build_subscribe_messages, decode_frame

from .settings import SimulatorSettings
from .simulator import Simulator


def _raw_client(port: int, conn_index: int, instruments: list[tuple[str, int]], mode: str, seconds: float) -> int:
    """One connection over a plain socket; returns frames counted during ``seconds``."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    path = f"/?version=2&token=bench&clientId=bench{conn_index}&authType=2"
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    for text in build_subscribe_messages(instruments, FeedMode[mode.upper()]):
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
        sock.sendall(header + mask + masked)
    frames = 0
    pos = 0
    data = bytearray(buf)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
        n = len(data)
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
            pos += head + length
        del data[:pos]
        pos = 0
    sock.close()
    return frames


async def _ws_client(port: int, conn_index: int, instruments: list[tuple[str, int]], mode: str, seconds: float) -> int:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/?version=2&token=bench&clientId=bench{conn_index}&authType=2"
    errors = ProtocolErrors()
    packets = 0
    async with connect(url, compression=None, max_queue=1024) as ws:
        for text in build_subscribe_messages(instruments, FeedMode[mode.upper()]):
            await ws.send(text)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                frame = await asyncio.wait_for(ws.recv(), 1.0)
            except TimeoutError:
                continue
            if isinstance(frame, bytes):
                packets += len(decode_frame(frame, errors))
    return packets


def _client_process(args: list[str]) -> None:
    spec = json.loads(args[0])
    instruments = [tuple(i) for i in spec["instruments"]]

    async def run() -> list[int]:
        if spec["kind"] == "raw":
            jobs = [
                asyncio.to_thread(_raw_client, spec["port"], idx, instruments, spec["mode"], spec["seconds"])
                for idx in spec["conn_indexes"]
            ]
        else:
            jobs = [_ws_client(spec["port"], idx, instruments, spec["mode"], spec["seconds"]) for idx in spec["conn_indexes"]]
        return list(await asyncio.gather(*jobs))

    print(json.dumps(asyncio.run(run())), flush=True)


async def bench(args: argparse.Namespace) -> dict[str, object]:
    settings = SimulatorSettings(
        port=0, control_port=0, burst=not args.paced, ticks_per_second=args.ticks_per_second,
        connection_rate_cap=args.connection_cap, total_rate_cap=args.total_cap, seed=1,
        master_scale=args.scale, log_level="WARNING",
    )  # fmt: skip
    sim = Simulator(settings)
    port, _ = await sim.start()
    assert sim.market is not None
    contracts = list(sim.market.catalog.contracts())
    instruments = [c.key for c in contracts[: args.instruments]]
    procs = []
    per_proc = [list(range(i, args.connections, args.processes)) for i in range(args.processes)]
    for indexes in per_proc:
        if not indexes:
            continue
        spec = {"kind": args.client, "port": port, "conn_indexes": indexes, "instruments": instruments, "mode": args.mode, "seconds": args.seconds}
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.feed.simulator.bench", "--client-process", json.dumps(spec),
                stdout=asyncio.subprocess.PIPE,
            )
        )  # fmt: skip
    # Measure the server's count over the middle of the run (after subscriptions settle).
    await asyncio.sleep(min(1.0, args.seconds / 4))
    start_packets, start = sim.feed.packets_sent if sim.feed else 0, time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.sleep(args.seconds / 2)
    elapsed = time.perf_counter() - start
    sent = (sim.feed.packets_sent if sim.feed else 0) - start_packets
    cpu = time.process_time() - cpu0
    outputs = [await p.communicate() for p in procs]
    received = sum(sum(json.loads(out.decode())) for out, _ in outputs)
    await sim.stop()
    return {
        "client": args.client,
        "mode": args.mode,
        "connections": args.connections,
        "instruments_per_connection": len(instruments),
        "server_packets_per_second": round(sent / elapsed),
        "server_cpu_share": round(cpu / elapsed, 2),
        "client_packets_per_second_avg": round(received / args.seconds),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.feed.simulator.bench")
    parser.add_argument("--client-process", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=("raw", "websockets"), default="raw")
    parser.add_argument("--connections", type=int, default=5)
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--instruments", type=int, default=1000, help="per connection")
    parser.add_argument("--mode", choices=("ticker", "quote", "full"), default="full")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--paced", action="store_true", help="not burst: ticks-per-second per instrument")
    parser.add_argument("--ticks-per-second", type=float, default=1.0)
    parser.add_argument("--connection-cap", type=float, default=1e6)
    parser.add_argument("--total-cap", type=float, default=1e6)
    parser.add_argument("--scale", choices=("small", "full"), default="small")
    args = parser.parse_args(argv)
    if args.client_process:
        _client_process([args.client_process])
        return
    print(json.dumps(asyncio.run(bench(args))))


if __name__ == "__main__":
    main()
