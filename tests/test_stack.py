"""`make run`'s supervisor brings the whole system up from nothing, restarts a crashed
process, and stops everything cleanly."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import grpc
import psutil
import pytest
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.registry.v1 import registry_pb2 as pb
from dataserver.registry.v1 import registry_pb2_grpc

from services.stack.__main__ import plan
from tests.stack_fixtures import (
    Stack,
    alive,
    child,
    free_offset,
    postmaster_pid,
    running_stack,
    serving,
    until,
    watchlist_answers,
)

OFFSET = free_offset(3000)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `make run` stack for this module's tests; the last of them stops it."""
    with running_stack(tmp_path_factory.mktemp("stack"), OFFSET) as stack:
        yield stack


def test_stack_comes_up_and_serves(stack: Stack) -> None:
    text = stack.banner
    assert "dataserver is up" in text, text
    registry_port = 50051 + OFFSET
    assert f"127.0.0.1:{registry_port} dataserver.registry.v1.RegistryService/SearchInstruments" in text
    # Issue 15: development tokens for grpcurl with AUTH_MODE=api_key.
    assert "admin token dsk_" in text and "user token  dsk_" in text and "-H 'authorization: Bearer dsk_" in text
    from services.common.config import load_settings

    for process in plan(load_settings({"STACK_PORT_OFFSET": str(OFFSET)})):
        if process.http_health_port:
            continue
        assert serving(process.grpc_port), process.name
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


def test_a_killed_shard_is_restarted_and_serves_again(stack: Stack) -> None:
    shard = child(stack, "shard-2")
    shard.kill()  # SIGKILL
    killed_at = time.monotonic()
    restart = until(
        lambda: next((r for r in stack.records("restarting") if r.get("child") == "shard-2"), None),
        20,
        f"the stack to log shard-2's restart; its log: {stack.log}",
    )
    assert restart["exit_status"] == -9 and restart["reason"] == "killed by SIGKILL", restart
    until(lambda: serving(50062 + OFFSET), 20 - (time.monotonic() - killed_at), "shard-2 to serve again")
    assert child(stack, "shard-2").pid != shard.pid
    assert stack.process.poll() is None, "the stack stays up"
    assert serving(50053 + OFFSET), "the gateway still serves"


def test_a_killed_postgres_is_restarted_and_the_services_read_from_it_again(stack: Stack) -> None:
    postmaster = postmaster_pid(stack)
    os.kill(postmaster, signal.SIGKILL)
    restart = until(
        lambda: next((r for r in stack.records("restarting") if r.get("child") == "postgres"), None),
        30,
        "the stack to log Postgres's restart",
    )
    assert f"pid {postmaster}" in restart["reason"], restart
    until(lambda: postmaster_pid(stack) not in (0, postmaster) and alive(postmaster_pid(stack)), 30, "a new postmaster")
    # The subscription service reads the dev user's watchlist from Postgres again.
    until(lambda: watchlist_answers(50052 + OFFSET), 60, "the subscription service to read from Postgres again")
    assert stack.process.poll() is None


def test_sigterm_stops_every_process_and_postgres(stack: Stack) -> None:
    children = [p.pid for p in psutil.Process(stack.process.pid).children(recursive=True)]
    assert len(children) >= 10
    postmaster = postmaster_pid(stack)
    assert alive(postmaster)
    restarts = len(stack.records("restarting"))
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(timeout=90) == 0
    assert [pid for pid in children if alive(pid)] == [], "no child of the stack outlives it"
    assert not alive(postmaster), "Postgres is stopped"
    assert len(stack.records("restarting")) == restarts, "nothing is restarted while the stack stops"


def test_the_simulator_generates_the_master_of_the_registry_s_trading_date() -> None:
    from datetime import date

    from services.common.clock import clock_from_settings, trading_date_of
    from services.common.config import load_settings
    from services.common.market_calendar import is_trading_day

    settings = load_settings({})
    simulator = next(p for p in plan(settings) if p.name == "simulator")
    given = date.fromisoformat(simulator.argv[simulator.argv.index("--trading-date") + 1])
    assert given == trading_date_of(clock_from_settings(settings)) and is_trading_day(given)
