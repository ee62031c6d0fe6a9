"""The whole stack as `make run` starts it (`python -m services.stack`), as real processes,
for tests that stop, kill or starve its parts: starting it on a port offset, finding its
children, and asking them questions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import load_settings
from services.stack.__main__ import Process, plan
from services.stack.__main__ import free_offset as stack_free_offset

T = TypeVar("T")
START_TIMEOUT_SECONDS = 150.0
# Postgres's port is chosen by the embedded server; this is every port the plan fixes.
_EXTRA_PORTS = 10  # beside the plan's own, for a test's extra processes (a second simulator)


def free_offset(preferred: int) -> int:
    """A free STACK_PORT_OFFSET from `preferred` on, with room for a test's extra processes."""
    return stack_free_offset(preferred, also=tuple(8765 + n for n in range(_EXTRA_PORTS, _EXTRA_PORTS + 2)))


@dataclass(frozen=True)
class Ports:
    """The stack's fixed ports, moved by its STACK_PORT_OFFSET."""

    offset: int

    @property
    def registry(self) -> int:
        return 50051 + self.offset

    @property
    def subscription(self) -> int:
        return 50052 + self.offset

    @property
    def gateway(self) -> int:
        return 50053 + self.offset

    @property
    def scheduler(self) -> int:
        return 50055 + self.offset

    @property
    def subscription_metrics(self) -> int:
        return 9465 + self.offset

    def shard(self, shard_id: int) -> int:
        return 50060 + self.offset + shard_id

    def shard_metrics(self, shard_id: int) -> int:
        return 9470 + self.offset + shard_id

    @property
    def feed(self) -> int:
        return 8765 + self.offset

    @property
    def control(self) -> int:
        return 8766 + self.offset


@dataclass
class Stack:
    process: subprocess.Popen[str]
    data_dir: Path
    ports: Ports
    banner: str = ""
    # Every JSON log line on the stack's stderr (its own and its children's).
    log: list[dict[str, Any]] = field(default_factory=list)

    def records(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in list(self.log) if r.get("msg") == msg]

    def plan(self) -> list[Process]:
        return plan(load_settings({"STACK_PORT_OFFSET": str(self.ports.offset)}))


def until(condition: Callable[[], T | None], timeout: float, what: str | Callable[[], str]) -> T:
    """The condition's first truthy value, polled; fails naming `what` past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what if isinstance(what, str) else what()}"
            )
        time.sleep(0.1)


def _collect_json(stream: Any, into: list[dict[str, Any]]) -> None:
    for line in stream:
        with contextlib.suppress(ValueError):
            into.append(json.loads(line))


@contextlib.contextmanager
def running_stack(data_dir: Path, offset: int, env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """`make run`'s stack on `offset`, with `env` on top of ours (its children inherit it);
    stopped with SIGTERM on the way out unless a test stopped it."""
    environment = {
        **os.environ,
        "DATASERVER_DATA_DIR": str(data_dir),
        "MASTER_SCALE": "small",
        "STACK_PORT_OFFSET": str(offset),
        "LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    environment.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.stack"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stack = Stack(process, data_dir, Ports(offset))
    threading.Thread(target=_collect_json, args=(process.stderr, stack.log), daemon=True).start()
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        banner: list[str] = []
        for line in process.stdout:
            banner.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        stack.banner = "".join(banner)
        # Nobody reads stdout past the banner; drained so that a child's print never blocks.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


def health_status(port: int) -> int:
    """The gRPC health status of the server on `port`; UNKNOWN when it does not answer."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            # A blocking channel here; types-grpcio-health-checking's HealthStub declares no methods.
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)
    return int(reply.status)


def serving(port: int) -> bool:
    return health_status(port) == health_pb2.HealthCheckResponse.SERVING


def children(stack: Stack) -> list[psutil.Process]:
    return psutil.Process(stack.process.pid).children()


def child(stack: Stack, name: str) -> psutil.Process:
    """The running process of the stack's child `name` ("shard-2", "gateway", "simulator", ...)."""
    wanted = next(p for p in stack.plan() if p.name == name)
    for candidate in children(stack):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            if candidate.cmdline()[1:] != list(wanted.argv[1:]):
                continue
            if name.startswith("shard-") and candidate.environ().get("SHARD_ID") != name.removeprefix("shard-"):
                continue
            if candidate.status() != psutil.STATUS_ZOMBIE:
                return candidate
    raise AssertionError(f"no running process for {name}")


def child_or_none(stack: Stack, name: str) -> psutil.Process | None:
    try:
        return child(stack, name)
    except AssertionError:
        return None


def database_url(stack: Stack) -> str:
    """The embedded Postgres's conninfo, as the stack gave it to its services."""
    return str(child(stack, "registry").environ()["DATABASE_URL"])


def postmaster_pid(stack: Stack) -> int:
    """The running postmaster's pid; 0 while there is none (its pid file is absent or being written)."""
    try:
        first = (stack.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[:1]
    except FileNotFoundError:
        return 0
    return int(first[0]) if first and first[0].isdigit() else 0


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watchlist_answers(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = subscription_pb2_grpc.SubscriptionServiceStub(channel).ListWatchlistItems(
                subscription_pb2.ListWatchlistItemsRequest(), timeout=5
            )
        except grpc.RpcError:
            return False
    return len(reply.watchlist_items) > 0


def http_json(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """A JSON request to a local HTTP server (the simulator's control API)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def metric_values(port: int, name: str) -> dict[str, float]:
    """A Prometheus metric's samples on /metrics of `port`: {label text: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            samples[labels[len(name) :]] = float(value)
    return samples
