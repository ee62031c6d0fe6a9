"""bench.children: a child is ready only by a line it wrote itself, and a call to a child
that is still starting (connection refused or reset) is retried within a bound."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from bench.children import retry_refused, spawn
from bench.feed.procs import http_json

CHILD = "import json, time; time.sleep(0.2); print(json.dumps({'msg': 'up', 'n': 2}), flush=True); time.sleep(60)"


def test_a_respawn_with_the_same_log_waits_for_its_own_ready_line(tmp_path: Path) -> None:
    log = tmp_path / "sim.log"
    log.write_text(json.dumps({"msg": "up", "n": 1}) + "\n")  # the previous process's ready line
    child = spawn("child", ["-c", CHILD], {}, log, lambda r: r.get("msg") == "up", timeout=30)
    try:
        assert child.info["n"] == 2
    finally:
        child.stop()
    assert not child.alive()


def _reserved_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"packets_sent": 7}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_endpoint_that_listens_late_is_retried_until_it_answers() -> None:
    port = _reserved_port()
    listening = threading.Event()
    servers: list[http.server.HTTPServer] = []

    def listen_late() -> None:
        listening.wait(0.3)  # the first requests are refused
        server = http.server.HTTPServer(("127.0.0.1", port), _Health)
        servers.append(server)
        server.serve_forever()

    thread = threading.Thread(target=listen_late, daemon=True)
    thread.start()
    try:
        assert http_json(f"http://127.0.0.1:{port}/health") == {"packets_sent": 7}
    finally:
        listening.set()
        while not servers and thread.is_alive():
            thread.join(0.05)
        for server in servers:
            server.shutdown()
            server.server_close()


def test_refusal_past_the_bound_and_other_errors_are_raised() -> None:
    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise ConnectionRefusedError("refused")

    with pytest.raises(OSError, match="the thing: refused"):
        retry_refused(refused, "the thing", seconds=0.3)
    assert len(calls) >= 2, "retried before giving up"

    def broken() -> None:
        calls.append(1)
        raise FileNotFoundError("gone")

    calls.clear()
    with pytest.raises(OSError, match="gone"):
        retry_refused(broken, "the thing", seconds=5)
    assert len(calls) == 1, "only a refused or reset connection is retried"
