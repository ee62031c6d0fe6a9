"""Registry benchmark: full-scale master load, process RSS, and RPC latency under paced load.

Set-up: an embedded Postgres in a temporary folder with a fresh migrated database, and the
full generated master for TRADING_DATE (generation is timed and reported, not counted).

1. A child process (bench.registry_child) is the registry: it starts the real server, times
   `holder.load(...)` (parse + COPY into Postgres + in-memory catalog) and reports the load
   seconds and its own RSS (VmRSS of /proc/self/status) with the master loaded. It then
   serves until told to stop.
2. This process is the client: an open-loop load paced at RATE requests/s over loopback
   gRPC, COUNT requests per RPC (SearchInstruments with a mix of realistic queries, then
   GetOptionChain with prices that sometimes stay at the ATM (cache hits) and sometimes
   move it). Latency is send -> reply of each request; p50/p90/p99/max and the achieved
   rate are reported, p99 against its target.

Every wait is bounded: the child's start and load, each RPC (deadline), each phase, and the
child's lifetime; the child is stopped (then terminated, then killed) at the end whatever
happened.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.children import bench_database
from bench.registry_child import SEED, TRADING_DATE, registry_child
from bench.report import Report, percentile

LOAD_TARGET_SECONDS = 20.0
RSS_TARGET_MB = 500.0
P99_TARGET_MS = 5.0

RATE = 200.0  # requests per second, open loop
COUNT = 2_000  # requests per RPC: ~10 s at RATE
RPC_DEADLINE_SECONDS = 2.0
DRAIN_SECONDS = 5.0  # after the last send, how long stragglers may take

SEARCH_QUERIES = (
    "RELIANCE", "NIFTY", "BANKNIFTY 58000 CE", "HDFC", "INFY FUT",
    "RELAINCE", "TATA", "SBIN", "reliance indus",
)  # fmt: skip
CHAIN_UNDERLYINGS = ("NIFTY", "BANKNIFTY", "RELIANCE", "CRUDEOIL")


# --- the client ---------------------------------------------------------------------------


@dataclass
class Paced:
    """What one paced run measured, per request index."""

    latencies: list[float | None]  # seconds, None when the request failed or never finished
    lags: list[float]  # how late each send was against its schedule, seconds
    errors: Counter[str]
    elapsed: float  # first send to last reply
    replies: list[Any]


async def _paced(call: Callable[..., Any], requests: Sequence[Any], rate: float) -> Paced:
    """Open loop: request i is sent at start + i/rate whatever the earlier ones are doing."""
    n = len(requests)
    latencies: list[float | None] = [None] * n
    replies: list[Any] = [None] * n
    lags = [0.0] * n
    errors: Counter[str] = Counter()
    finished = [0.0]

    async def one(index: int, request: Any) -> None:
        sent = time.perf_counter()
        try:
            reply = await call(request, timeout=RPC_DEADLINE_SECONDS)
        except Exception as error:
            code = getattr(error, "code", None)
            errors[code().name if callable(code) else type(error).__name__] += 1
            return
        done = time.perf_counter()
        latencies[index] = done - sent
        replies[index] = reply
        finished[0] = max(finished[0], done)

    tasks = []
    start = time.perf_counter() + 0.02
    for index, request in enumerate(requests):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags[index] = time.perf_counter() - due
        tasks.append(asyncio.create_task(one(index, request)))
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_SECONDS + RPC_DEADLINE_SECONDS)
    for task in pending:
        task.cancel()
    if pending:
        errors["not finished"] += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    return Paced(latencies, lags, errors, max(finished[0], start) - start, replies)


def _report_paced(report: Report, prefix: str, run: Paced, labels: Sequence[str]) -> None:
    done = sorted(lat for lat in run.latencies if lat is not None)
    ms = [lat * 1000.0 for lat in done]
    report.add(f"{prefix}.requests", len(run.latencies))
    report.add(
        f"{prefix}.achieved_rps",
        len(done) / run.elapsed if run.elapsed > 0 else 0.0,
        "req/s",
        target=RATE * 0.95,
        op=">=",
    )
    report.add(f"{prefix}.errors", sum(run.errors.values()), target=0)
    report.add(f"{prefix}.p50_ms", percentile(ms, 50), "ms")
    report.add(f"{prefix}.p90_ms", percentile(ms, 90), "ms")
    report.add(f"{prefix}.p99_ms", percentile(ms, 99), "ms", target=P99_TARGET_MS)
    report.add(f"{prefix}.max_ms", ms[-1] if ms else float("nan"), "ms")
    if run.errors:
        report.note(f"errors by code: {dict(run.errors)}")
    lags = sorted(run.lags)
    report.note(
        f"client send lag behind schedule: p50 {percentile(lags, 50) * 1000:.2f} ms, "
        f"p99 {percentile(lags, 99) * 1000:.2f} ms, max {lags[-1] * 1000:.2f} ms"
    )
    by_label: dict[str, list[float]] = defaultdict(list)
    for label, lat in zip(labels, run.latencies, strict=True):
        if lat is not None:
            by_label[label].append(lat * 1000.0)
    width = max(len(label) for label in by_label) if by_label else 0
    for label in sorted(by_label, key=lambda name: -percentile(sorted(by_label[name]), 99)):
        values = sorted(by_label[label])
        report.note(
            f"{label:<{width}}  n={len(values):4d}  p50 {percentile(values, 50):6.2f}  "
            f"p90 {percentile(values, 90):6.2f}  p99 {percentile(values, 99):6.2f}  max {values[-1]:6.2f} ms"
        )


def _search_requests(pb: Any, rng: random.Random) -> tuple[list[Any], list[str]]:
    labels = [rng.choice(SEARCH_QUERIES) for _ in range(COUNT)]
    return [pb.SearchInstrumentsRequest(query=q) for q in labels], [f"search {q!r}" for q in labels]


def _chain_requests(pb: Any, rng: random.Random, bases: dict[str, tuple[float, float]]) -> tuple[list[Any], list[str]]:
    """Per underlying a random walk on the strike grid: most requests jitter the price within
    the ATM strike's band (served from the chain cache once seen), about a quarter move the
    ATM by 1-3 strikes (a new window is computed and persisted the first time it is seen).
    """
    centre = {symbol: 0 for symbol in bases}
    requests, labels = [], []
    for _ in range(COUNT):
        symbol = rng.choice(CHAIN_UNDERLYINGS)
        atm, step = bases[symbol]
        if rng.random() < 0.25:
            centre[symbol] += rng.choice((-3, -2, -1, 1, 2, 3))
        price = atm + centre[symbol] * step + rng.uniform(-0.4, 0.4) * step
        each_side = 20 if rng.random() < 0.2 else 0
        requests.append(
            pb.GetOptionChainRequest(
                underlying_symbol=symbol, underlying_price=round(price, 2), strikes_each_side=each_side
            )
        )
        labels.append(f"chain {symbol}")
    return requests, labels


async def _client(address: str, report: Report) -> None:
    import grpc
    from dataserver.registry.v1 import registry_pb2 as pb
    from dataserver.registry.v1 import registry_pb2_grpc

    rng = random.Random(SEED)
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for _ in range(50):  # warm the connection and both processes' code paths
            await stub.GetMasterStatus(pb.GetMasterStatusRequest(), timeout=RPC_DEADLINE_SECONDS)

        # (a) search
        requests, labels = _search_requests(pb, rng)
        run = await _paced(stub.SearchInstruments, requests, RATE)
        report.note(f"SearchInstruments: {COUNT} requests at {RATE:.0f}/s, queries {list(SEARCH_QUERIES)}")
        _report_paced(report, "registry.search", run, labels)

        # (b) option chains: prices start at each underlying's previous close (width 1, so
        # these discovery calls do not warm the cache entries the run uses).
        bases: dict[str, tuple[float, float]] = {}
        for symbol in CHAIN_UNDERLYINGS:
            reply = await stub.GetOptionChain(
                pb.GetOptionChainRequest(underlying_symbol=symbol, use_last_price=True, strikes_each_side=1),
                timeout=RPC_DEADLINE_SECONDS,
            )
            bases[symbol] = (reply.atm_strike, reply.strike_step)
        requests, labels = _chain_requests(pb, rng, bases)
        seen: set[tuple[Any, ...]] = set()
        run = await _paced(stub.GetOptionChain, requests, RATE)
        report.note(
            f"GetOptionChain: {COUNT} requests at {RATE:.0f}/s over {list(CHAIN_UNDERLYINGS)}, "
            f"start (ATM, step) {bases}"
        )
        for index, reply in enumerate(run.replies):  # first sight of a window = a cache miss on the server
            if reply is None:
                continue
            key = (
                requests[index].underlying_symbol,
                reply.expiry_date,
                reply.atm_strike,
                requests[index].strikes_each_side,
            )
            kind = "miss" if key not in seen else "hit"
            seen.add(key)
            labels[index] += f" ({kind})"
        misses = sum(label.endswith("(miss)") for label in labels)
        report.note(f"chain windows computed (cache misses): {misses} of {COUNT}")
        _report_paced(report, "registry.chain", run, labels)


# --- the benchmark ------------------------------------------------------------------------


def run(report: Report) -> None:
    from services.registry.sources import from_generator

    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        with bench_database(folder, "bench_registry") as conninfo:
            report.note(f"embedded Postgres + migrated database in {time.perf_counter() - started:.1f} s")

            started = time.perf_counter()
            master = from_generator(folder / "masters", TRADING_DATE, SEED, "full")
            report.add("registry.generate_seconds", time.perf_counter() - started, "s")
            report.note(f"master {master.csv_path.name}: {master.csv_path.stat().st_size / 1e6:.1f} MB")

            log_path = folder / "registry.log"
            with registry_child(folder, conninfo, master) as registry:
                ready = registry.ready
                report.add("registry.master_rows", ready["rows"])
                report.add("registry.load_seconds", ready["load_seconds"], "s", target=LOAD_TARGET_SECONDS)
                phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in ready["phases"].items())
                report.note(f"load phases: {phases} (rejected rows: {ready['rejected']})")
                report.add("registry.rss_mb", ready["rss_loaded_kib"] / 1024, "MB", target=RSS_TARGET_MB)
                report.note(
                    f"registry process RSS: {ready['rss_started_kib'] / 1024:.0f} MB before the load, "
                    f"peak during the load {ready['hwm_loaded_kib'] / 1024:.0f} MB"
                )
                asyncio.run(_client(ready["address"], report))
            final = registry.final
            if final.get("event") == "stopping":
                report.note(
                    f"registry process RSS after the RPC runs: {final['rss_end_kib'] / 1024:.0f} MB "
                    f"(peak {final['hwm_end_kib'] / 1024:.0f} MB); "
                    f"log: {log_path.stat().st_size / 1e6:.1f} MB of JSON lines"
                )
