"""`make run`'s supervisor brings the whole system up from nothing and stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.registry.v1 import registry_pb2 as pb
from dataserver.registry.v1 import registry_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.stack.__main__ import plan

OFFSET = 3000


def test_stack_comes_up_serves_and_stops(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATASERVER_DATA_DIR": str(tmp_path),
        "MASTER_SCALE": "small",
        "STACK_PORT_OFFSET": str(OFFSET),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)
    stack = subprocess.Popen([sys.executable, "-m", "services.stack"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert stack.stdout is not None
        deadline = time.monotonic() + 150
        banner: list[str] = []
        for line in stack.stdout:
            banner.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        text = "".join(banner)
        assert "dataserver is up" in text, text
        registry_port = 50051 + OFFSET
        assert f"127.0.0.1:{registry_port} dataserver.registry.v1.RegistryService/SearchInstruments" in text
        from services.common.config import load_settings

        for process in plan(load_settings({"STACK_PORT_OFFSET": str(OFFSET)})):
            if process.http_health_port:
                continue
            with grpc.insecure_channel(f"127.0.0.1:{process.grpc_port}") as channel:
                # A blocking channel here; types-grpcio-health-checking's HealthStub declares no methods.
                reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, process.name
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
            priced = next(
                t for m in stream if m.WhichOneof("body") == "batch" for t in m.batch.ticks if t.last_price > 0
            )
            assert priced.sequence >= 1
            stream.cancel()
        assert (tmp_path / "pgdata" / "PG_VERSION").is_file()
    finally:
        stack.send_signal(signal.SIGTERM)
        assert stack.wait(timeout=60) == 0


def test_the_simulator_generates_the_master_of_the_registry_s_trading_date() -> None:
    from datetime import date

    from services.common.clock import clock_from_settings, trading_date_of
    from services.common.config import load_settings
    from services.common.market_calendar import is_trading_day

    settings = load_settings({})
    simulator = next(p for p in plan(settings) if p.name == "simulator")
    given = date.fromisoformat(simulator.argv[simulator.argv.index("--trading-date") + 1])
    assert given == trading_date_of(clock_from_settings(settings)) and is_trading_day(given)
