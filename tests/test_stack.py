"""`make run`'s supervisor brings the whole system up from nothing, restarts a crashed
process, and stops everything cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
import pytest
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.registry.v1 import registry_pb2 as pb
from dataserver.registry.v1 import registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.stack.__main__ import plan

OFFSET = 3000
T = TypeVar("T")


@dataclass
class Stack:
    process: subprocess.Popen[str]
    data_dir: Path
    banner: str = ""
    # Every JSON log line on the stack's stderr (its own and its children's).
    log: list[dict[str, Any]] = field(default_factory=list)

    def records(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in list(self.log) if r.get("msg") == msg]


def _until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _collect_json(stream: Any, into: list[dict[str, Any]]) -> None:
    for line in stream:
        with contextlib.suppress(ValueError):
            into.append(json.loads(line))


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            # A blocking channel here; types-grpcio-health-checking's HealthStub declares no methods.
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `make run` stack for this module's tests; the last of them stops it."""
    data_dir = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "DATASERVER_DATA_DIR": str(data_dir),
        "MASTER_SCALE": "small",
        "STACK_PORT_OFFSET": str(OFFSET),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.stack"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stack = Stack(process, data_dir)
    threading.Thread(target=_collect_json, args=(process.stderr, stack.log), daemon=True).start()
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 150
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


def test_stack_comes_up_and_serves(stack: Stack) -> None:
    text = stack.banner
    assert "dataserver is up" in text, text
    registry_port = 50051 + OFFSET
    assert f"127.0.0.1:{registry_port} dataserver.registry.v1.RegistryService/SearchInstruments" in text
    from services.common.config import load_settings

    for process in plan(load_settings({"STACK_PORT_OFFSET": str(OFFSET)})):
        if process.http_health_port:
            continue
        assert _serving(process.grpc_port), process.name
    with grpc.insecure_channel(f"127.0.0.1:{registry_port}") as channel:
        found = registry_pb2_grpc.RegistryServiceStub(channel).SearchInstruments(
            pb.SearchInstrumentsRequest(query="RELIANCE"), timeout=5
        )
    assert found.instruments[0].key.security_id == 2885
    # Ticks flow: the dev user's watchlist was seeded with NIFTY's chain.
    with grpc.insecure_channel(f"127.0.0.1:{50053 + OFFSET}") as channel:
        stream = feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(
            feed_pb2.StreamTicksRequest(my_watchlist=True), timeout=30
        )
        snapshot = next(stream).snapshot
        assert len(snapshot.instruments) > 10
        # (the first packets of an instrument may be its previous close only)
        priced = next(t for m in stream if m.WhichOneof("body") == "batch" for t in m.batch.ticks if t.last_price > 0)
        assert priced.sequence >= 1
        stream.cancel()
    assert (stack.data_dir / "pgdata" / "PG_VERSION").is_file()


def _child(stack: Stack, shard_id: str) -> psutil.Process:
    for child in psutil.Process(stack.process.pid).children():
        if "shard" in child.cmdline() and child.environ().get("SHARD_ID") == shard_id:
            return child
    raise AssertionError(f"no process for shard {shard_id}")


def test_a_killed_shard_is_restarted_and_serves_again(stack: Stack) -> None:
    shard = _child(stack, "2")
    shard.kill()  # SIGKILL
    killed_at = time.monotonic()
    restart = _until(
        lambda: next((r for r in stack.records("restarting") if r.get("child") == "shard-2"), None),
        20,
        f"the stack to log shard-2's restart; its log: {stack.log}",
    )
    assert restart["exit_status"] == -9 and restart["reason"] == "killed by SIGKILL", restart
    _until(lambda: _serving(50062 + OFFSET), 20 - (time.monotonic() - killed_at), "shard-2 to serve again")
    assert _child(stack, "2").pid != shard.pid
    assert stack.process.poll() is None, "the stack stays up"
    assert _serving(50053 + OFFSET), "the gateway still serves"


def _postmaster_pid(stack: Stack) -> int:
    """The running postmaster's pid; 0 while there is none (its pid file is absent or being written)."""
    try:
        first = (stack.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[:1]
    except FileNotFoundError:
        return 0
    return int(first[0]) if first and first[0].isdigit() else 0


def _watchlist_answers() -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{50052 + OFFSET}") as channel:
        try:
            reply = subscription_pb2_grpc.SubscriptionServiceStub(channel).ListWatchlistItems(
                subscription_pb2.ListWatchlistItemsRequest(), timeout=5
            )
        except grpc.RpcError:
            return False
    return len(reply.watchlist_items) > 0


def test_a_killed_postgres_is_restarted_and_the_services_read_from_it_again(stack: Stack) -> None:
    postmaster = _postmaster_pid(stack)
    os.kill(postmaster, signal.SIGKILL)
    restart = _until(
        lambda: next((r for r in stack.records("restarting") if r.get("child") == "postgres"), None),
        30,
        "the stack to log Postgres's restart",
    )
    assert f"pid {postmaster}" in restart["reason"], restart
    _until(
        lambda: _postmaster_pid(stack) not in (0, postmaster) and _alive(_postmaster_pid(stack)), 30, "a new postmaster"
    )
    # The subscription service reads the dev user's watchlist from Postgres again.
    _until(_watchlist_answers, 60, "the subscription service to read from Postgres again")
    assert stack.process.poll() is None


def test_sigterm_stops_every_process_and_postgres(stack: Stack) -> None:
    children = [p.pid for p in psutil.Process(stack.process.pid).children(recursive=True)]
    assert len(children) >= 10
    postmaster = _postmaster_pid(stack)
    assert _alive(postmaster)
    restarts = len(stack.records("restarting"))
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(timeout=90) == 0
    assert [pid for pid in children if _alive(pid)] == [], "no child of the stack outlives it"
    assert not _alive(postmaster), "Postgres is stopped"
    assert len(stack.records("restarting")) == restarts, "nothing is restarted while the stack stops"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_simulator_generates_the_master_of_the_registry_s_trading_date() -> None:
    from datetime import date

    from services.common.clock import clock_from_settings, trading_date_of
    from services.common.config import load_settings
    from services.common.market_calendar import is_trading_day

    settings = load_settings({})
    simulator = next(p for p in plan(settings) if p.name == "simulator")
    given = date.fromisoformat(simulator.argv[simulator.argv.index("--trading-date") + 1])
    assert given == trading_date_of(clock_from_settings(settings)) and is_trading_day(given)
