"""The feed bench's processes: every child it started (stopped in reverse order at the end,
whatever happened), the environment of a service child, and its HTTP endpoints (the
simulator's control port, a service's /metrics), read with connection-refused retried
within a bound, since a child may still be starting."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.children import START_SECONDS, Child, retry_refused, spawn

PROFILE = os.environ.get("BENCH_PROFILE", "") not in ("", "0")  # "gc": GC pauses only, no cProfile
HTTP_SECONDS = 5.0  # one request
REFUSED_SECONDS = 15.0  # how long an endpoint may refuse connections before it is an error


class Children:
    """Every child this bench started, stopped in reverse order at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.all: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        ready: Callable[[dict[str, Any]], bool] | None,
        profile_prefix: Path | None = None,
        timeout: float = START_SECONDS,
    ) -> Child:
        """bench.children.spawn, logging to FOLDER/NAME.log; the child is stopped at the end."""
        child = spawn(name, argv, env, self.folder / f"{name}.log", ready, profile_prefix, timeout)
        self.all.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.all):
            try:
                child.stop()
            except Exception as error:
                print(f"  stopping {child.name} failed: {error!r}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(**extra: str) -> dict[str, str]:
    """A service child's environment: dev auth, loopback, ports picked by the kernel."""
    env = {
        **os.environ,
        "AUTH_MODE": "dev",
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "INFO",
        **extra,
    }
    for name in (
        "SERVICE_TOKEN",
        "KUBERNETES_SERVICE_HOST",
        "DHAN_ACCESS_TOKEN",
        "DHAN_CLIENT_ID",
        "DHAN_ACCOUNTS",
        "FEED_ACCOUNTS",
    ):
        if name not in extra:
            env.pop(name, None)
    return env


def http_get(url: str) -> bytes:
    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=HTTP_SECONDS) as response:
            return bytes(response.read())

    return retry_refused(get, f"GET {url}", REFUSED_SECONDS)


def http_json(url: str) -> Any:
    return json.loads(http_get(url))


def metrics(port: int, prefix: tuple[str, ...] = ("feed_", "event_loop_lag_seconds")) -> dict[str, float]:
    """Prometheus text of a /metrics endpoint: {series: value} for names starting with prefix."""
    out: dict[str, float] = {}
    for line in http_get(f"http://127.0.0.1:{port}/metrics").decode().splitlines():
        if line.startswith(prefix):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
