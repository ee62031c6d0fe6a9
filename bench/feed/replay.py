"""The replay feed of the ingest part: ``python -m bench.feed.replay SPEC_JSON``. It serves
frames a ``raw`` reader recorded from the simulator, in a loop, to one client at a time, so
a client is bound by itself rather than by the simulator."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import signal
import socket
import sys
import threading
import time
from typing import Any


def _handshake(conn: socket.socket) -> None:
    """Reads the client's upgrade request and accepts it."""
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


def _serve(conn: socket.socket, chunks: list[bytes], stop: threading.Event, deadline: float) -> None:
    """The recording in a loop until the client goes; what it sends is read and dropped."""
    gone = threading.Event()

    def drain() -> None:
        conn.settimeout(0.5)
        while not gone.is_set():
            try:
                if not conn.recv(65536):
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        gone.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    conn.settimeout(5)
    with contextlib.suppress(OSError):
        while not gone.is_set() and not stop.is_set() and time.monotonic() < deadline:
            for chunk in chunks:
                conn.sendall(chunk)
    gone.set()
    reader.join(2)


def replay_main(spec: dict[str, Any]) -> None:
    """A feed that replays recorded frames as fast as the client takes them: the WebSocket
    handshake, then the recording in a loop with sendall (a kernel copy; next to no CPU),
    one client at a time. Stops after ``lifetime`` seconds or on SIGTERM."""
    with open(spec["record_path"], "rb") as file:
        recording = file.read()
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
        with conn:
            _handshake(conn)
            _serve(conn, chunks, stop, deadline)
    server.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.feed.replay SPEC_JSON")
    replay_main(json.loads(sys.argv[1]))
