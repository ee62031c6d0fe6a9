"""Subscription benchmark: watchlist adds, filling the pool, status and memory at full scale.

Set-up (as bench.registry, whose helpers it imports): an embedded Postgres in a temporary
folder with a fresh migrated database; the full generated master for TRADING_DATE loaded by
a registry child process (the real registry server, dev auth). Then the real subscription
service as its own process, `python -m services.subscription` (AUTH_MODE=dev, so calls
without a token act as the development admin, who may act for any user through user_id),
on the same database, with no gateway (GATEWAY_ADDR=127.0.0.1:1: no live price, the ATM
comes from the previous close), the default budget (5 x 5000 = 25,000) and per-user quotas
raised so they never interfere. It logs JSON lines to a file; its port is read from the
"started" line.

The units: every (F&O stock, option expiry) pair the registry lists (ListExpiries,
options), each added with expiry_date set and the default stock chain (12 strikes each side:
50 options + the stock = 51 instruments), so each add is a new unit.

1. Add latency: one client, sequential AddWatchlistItem, ADD_COUNT distinct units (after a
   few warm-up adds) while the pool is far from full; p50/p90/p99/max, p99 against target.
   Then ClearWatchlists(all_users) puts the pool back to 0 (timed, information).
2. Fill: FILL_CLIENTS concurrent clients, each acting for its own user id, add distinct units
   until one more unit would not fit (tracked from the replies' instruments); then
   GetSubscriptionStatus must show >= capacity - 51. The fill time runs from the first send
   to that status reply; units/s and instruments/s are information.
3. Status: with the pool full, STATUS_COUNT sequential GetSubscriptionStatus calls, then an
   open-loop run at STATUS_RATE/s; p99 of the sequential run against target.
4. Memory: VmRSS (and VmHWM) of the subscription process with the pool full, after the
   status runs.
5. Eviction (information): EVICT_ADDS more sequential adds of unused units; each has to
   evict least recently used units; their latency and the evictions counted.
6. Accounts: the fill 0 -> 50,000 with two accounts against 0 -> 25,000 with one, as a ratio,
   each on a fresh subscription process (bench/subscription_accounts.py).

Then, always, the status queries (services/subscription/reports.sql) and the hot read queries
of an add (queries.sql) are timed directly over psycopg against the same full database, with
EXPLAIN ANALYZE of the slowest, so a miss comes with where the time goes.

BENCH_PROFILE=1 runs the service under cProfile (bench._profiled_subscription), one profile
per phase, and prints each phase's top functions.

Every wait is bounded: each RPC (deadline), each phase (time limit), the service's start and
stop (SIGTERM, then SIGKILL), the registry child's (as bench.registry). Loopback only.
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.children import Child, bench_database, service_started, spawn, status_kib
from bench.registry import _paced
from bench.registry_child import SEED, TRADING_DATE, registry_child
from bench.report import Report, percentile, print_profile
from bench.subscription_calls import add, get_status, watchlist_units
from bench.subscription_fill import FILL_CLIENTS, FILL_TIME_LIMIT_SECONDS, Fill, FillShape, fill

CONNECTIONS, PER_CONNECTION = 5, 5000  # the default budget, set explicitly
CAPACITY = CONNECTIONS * PER_CONNECTION
UNIT_SIZE = 51  # a stock with the default chain: 12 strikes each side, calls and puts, + the stock

ADD_WARMUP = 5
ADD_COUNT = 200
ADD_P99_TARGET_MS = 50.0
FILL_TARGET_SECONDS = 15.0
DEFAULT_FILL = FillShape(CAPACITY, UNIT_SIZE)
STATUS_COUNT = 500
STATUS_RATE = 50.0
STATUS_PACED_COUNT = 250
STATUS_P99_TARGET_MS = 10.0
STATUS_TIME_LIMIT_SECONDS = 120.0
RSS_TARGET_MB = 300.0
EVICT_ADDS = 30
SQL_REPEATS = 20

SERVICE_START_SECONDS = 60.0
SERVICE_STOP_SECONDS = 30.0
PROFILE = os.environ.get("BENCH_PROFILE", "") not in ("", "0")


# --- the subscription process -------------------------------------------------------------


# --- the client ---------------------------------------------------------------------------


def _ms(values: Sequence[float]) -> list[float]:
    return sorted(v * 1000.0 for v in values)


def _report_latencies(report: Report, prefix: str, seconds: Sequence[float], target_ms: float | None) -> None:
    ms = _ms(seconds)
    report.add(f"{prefix}.count", len(ms))
    report.add(f"{prefix}.p50_ms", percentile(ms, 50), "ms")
    report.add(f"{prefix}.p90_ms", percentile(ms, 90), "ms")
    report.add(f"{prefix}.p99_ms", percentile(ms, 99), "ms", target=target_ms)
    report.add(f"{prefix}.max_ms", ms[-1] if ms else math.nan, "ms")


async def _latency_phase(report: Report, stub: Any, pb: Any, pairs: list[tuple[str, str]]) -> None:
    sizes: Counter[int] = Counter()
    for pair in pairs[:ADD_WARMUP]:
        await add(stub, pb, pair)
    seconds: list[float] = []
    started = time.perf_counter()
    for pair in pairs[ADD_WARMUP : ADD_WARMUP + ADD_COUNT]:
        result = await add(stub, pb, pair)
        seconds.append(result.seconds)
        sizes[len(result.instruments)] += 1
    elapsed = time.perf_counter() - started
    status = await get_status(stub, pb)
    report.note(
        f"AddWatchlistItem, one client, sequential: {len(seconds)} distinct units after {ADD_WARMUP} warm-up adds, "
        f"instruments per unit {dict(sizes)}, {len(seconds) / elapsed:.1f} adds/s; subscribed after: "
        f"{status.subscribed_count} of {status.capacity}"
    )
    _report_latencies(report, "subscription.add", seconds, ADD_P99_TARGET_MS)
    slowest = sorted(range(len(seconds)), key=lambda i: -seconds[i])[:5]
    report.note("slowest adds: " + ", ".join(f"#{i} {seconds[i] * 1000:.1f} ms" for i in sorted(slowest)))


async def _clear(report: Report, stub: Any, pb: Any) -> None:
    started = time.perf_counter()
    reply = await stub.ClearWatchlists(pb.ClearWatchlistsRequest(all_users=True), timeout=60)
    elapsed = time.perf_counter() - started
    status = await get_status(stub, pb)
    report.note(
        f"ClearWatchlists(all users): {reply.items_deleted} items, {reply.instruments_unsubscribed} instruments in "
        f"{elapsed * 1000:.0f} ms; subscribed now {status.subscribed_count}"
    )
    if status.subscribed_count != 0:
        raise RuntimeError(f"the pool is not empty after ClearWatchlists: {status.subscribed_count}")


async def _fill_phase(report: Report, stub: Any, pb: Any, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Fills the pool from 0; returns the pairs it did not use."""
    result = await fill(stub, pb, pairs, DEFAULT_FILL)
    _report_fill(report, result)
    return result.unused


def _report_fill(report: Report, fill: Fill) -> None:
    status, elapsed = fill.status, fill.elapsed
    full = fill.full(DEFAULT_FILL)
    report.add("subscription.fill.subscribed", status.subscribed_count, target=CAPACITY - UNIT_SIZE, op=">=")
    report.add("subscription.fill_seconds", elapsed if full else math.nan, "s", target=FILL_TARGET_SECONDS)
    report.add("subscription.fill.adds_per_s", fill.units / elapsed, "adds/s")
    report.add("subscription.fill.instruments_per_s", status.subscribed_count / elapsed, "instr/s")
    report.add("subscription.fill.errors", sum(fill.errors.values()), target=0)
    if fill.errors:
        report.note(f"fill errors by code: {dict(fill.errors)}")
    if not full:
        report.note(
            f"not full after {elapsed:.1f} s (limit {FILL_TIME_LIMIT_SECONDS:.0f} s): {status.subscribed_count} "
            f"of {CAPACITY}; at this rate the fill would take "
            f"{CAPACITY / max(status.subscribed_count / elapsed, 1e-9):.0f} s"
        )
    ms = _ms(fill.latencies)
    report.note(
        f"fill: {FILL_CLIENTS} clients (one user id each), {fill.units} units, {len(fill.held)} distinct instruments "
        f"held, {fill.evictions} evictions, capacity {status.capacity}; per-add latency under this load: p50 "
        f"{percentile(ms, 50):.1f}, p90 {percentile(ms, 90):.1f}, p99 {percentile(ms, 99):.1f}, "
        f"max {ms[-1] if ms else math.nan:.1f} ms"
    )
    marks = []
    for fraction in (0.25, 0.5, 0.75, 1.0):
        reached = next((t for t, n in fill.progress if n >= fraction * (CAPACITY - UNIT_SIZE)), None)
        marks.append(f"{fraction:.0%} at {reached:.1f} s" if reached is not None else f"{fraction:.0%} never")
    report.note("fill progress (instruments held): " + ", ".join(marks))
    if fill.progress:  # does the add get slower as the tables fill?
        third = max(1, len(fill.latencies) // 3)
        report.note(
            "add latency p50 by fill third: "
            + ", ".join(f"{percentile(_ms(fill.latencies[i * third : (i + 1) * third]), 50):.1f}" for i in range(3))
            + " ms"
        )


async def _status_phase(report: Report, stub: Any, pb: Any) -> Any:
    for _ in range(20):  # warm
        await get_status(stub, pb)
    seconds: list[float] = []
    last = None
    deadline = time.monotonic() + STATUS_TIME_LIMIT_SECONDS
    for _ in range(STATUS_COUNT):
        if time.monotonic() > deadline:
            break
        sent = time.perf_counter()
        last = await get_status(stub, pb)
        seconds.append(time.perf_counter() - sent)
    assert last is not None
    report.note(
        f"GetSubscriptionStatus with {last.subscribed_count} subscribed, "
        f"{sum(t.owner_count for t in last.tiers)} owners, "
        f"{last.user_count} users, {last.evictions_today} evictions today; {len(seconds)} sequential calls"
    )
    _report_latencies(report, "subscription.status", seconds, STATUS_P99_TARGET_MS)
    run = await _paced(lambda request, timeout: get_status(stub, pb), [None] * STATUS_PACED_COUNT, STATUS_RATE)
    done = _ms([lat for lat in run.latencies if lat is not None])
    report.note(
        f"GetSubscriptionStatus open loop at {STATUS_RATE:.0f}/s, {STATUS_PACED_COUNT} calls: "
        f"p50 {percentile(done, 50):.2f}, "
        f"p90 {percentile(done, 90):.2f}, p99 {percentile(done, 99):.2f}, max {done[-1] if done else math.nan:.2f} ms, "
        f"errors {dict(run.errors) or 0}"
    )
    report.add("subscription.status_paced.p99_ms", percentile(done, 99), "ms")
    return last


async def _evict_phase(report: Report, stub: Any, pb: Any, pairs: list[tuple[str, str]]) -> None:
    before = await get_status(stub, pb)
    evicting: list[float] = []
    other: list[float] = []
    evictions = 0
    for pair in pairs[:EVICT_ADDS]:
        result = await add(stub, pb, pair, "bench-user-evict")
        evictions += result.evictions
        (evicting if result.evictions else other).append(result.seconds)
    after = await get_status(stub, pb)
    report.add("subscription.evict.adds", len(evicting) + len(other))
    report.add("subscription.evict.evictions", evictions)
    ms = _ms(evicting)
    report.add("subscription.evict.p50_ms", percentile(ms, 50), "ms")
    report.add("subscription.evict.p99_ms", percentile(ms, 99), "ms")
    report.note(
        f"{len(evicting)} adds evicted (max {ms[-1] if ms else math.nan:.1f} ms), "
        f"{len(other)} fitted without evicting; "
        f"subscribed {before.subscribed_count} -> {after.subscribed_count}; evictions today "
        f"{before.evictions_today} -> {after.evictions_today}"
    )


async def _client(report: Report, service: Child, registry_address: str) -> list[tuple[str, str]]:
    """Phases 1 to 5 on `service`; returns the units (pairs) it used, for phase 6."""
    import grpc
    from dataserver.subscription.v1 import subscription_pb2 as pb
    from dataserver.subscription.v1 import subscription_pb2_grpc

    pairs = await watchlist_units(registry_address)
    needed = ADD_WARMUP + ADD_COUNT
    report.note(f"units available: {len(pairs)} (stock, expiry) pairs, about {len(pairs) * UNIT_SIZE} instruments")
    if len(pairs) < needed or len(pairs) * (UNIT_SIZE - 1) < CAPACITY + EVICT_ADDS * UNIT_SIZE:
        raise RuntimeError(f"the master lists too few stock option expiries ({len(pairs)}) to fill {CAPACITY}")

    async with grpc.aio.insecure_channel(service.address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stub = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        for _ in range(20):
            await get_status(stub, pb)
        service.profile_phase("start-up")

        await _latency_phase(report, stub, pb, pairs[:needed])
        service.profile_phase("1. sequential adds")
        await _clear(report, stub, pb)
        service.profile_phase("clear")

        # The fill starts with the pairs the latency phase did not use (cold in the
        # registry's chain cache too), then comes back to those.
        unused = await _fill_phase(report, stub, pb, pairs[needed:] + pairs[:needed])
        service.profile_phase("2. fill")

        status = await _status_phase(report, stub, pb)
        service.profile_phase("3. status")

        rss = status_kib(service.pid)
        report.add("subscription.rss_mb", rss["VmRSS"] / 1024, "MB", target=RSS_TARGET_MB)
        report.note(
            f"subscription process with {status.subscribed_count} subscribed: "
            f"peak RSS (VmHWM) {rss['VmHWM'] / 1024:.0f} MB"
        )

        await _evict_phase(report, stub, pb, unused)
        service.profile_phase("5. evicting adds")
    return pairs


# --- direct SQL timings -------------------------------------------------------------------


def _report_profiles(service: Child) -> None:
    for phase, path in service.profiles:
        print_profile(path, f"the subscription process, phase {phase}")


# --- the benchmark ------------------------------------------------------------------------


def _start_service(folder: Path, conninfo: str, registry_address: str, accounts: int = 1) -> Child:
    """The real subscription service as its own process, on the bench's database, with
    `accounts` simulated broker accounts of CONNECTIONS connections each."""
    env = {
        **os.environ,
        "DATABASE_URL": conninfo,
        "DATASERVER_DATA_DIR": str(folder),
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "METRICS_PORT": "0",
        "REGISTRY_ADDR": registry_address,
        "GATEWAY_ADDR": "127.0.0.1:1",  # nothing listens: no live price
        "AUTH_MODE": "dev",
        "FEED_ACCOUNTS": str(accounts),
        "FEED_CONNECTIONS": str(CONNECTIONS),
        "FEED_INSTRUMENTS_PER_CONNECTION": str(PER_CONNECTION),
        "USER_MAX_ITEMS": "100000",
        "USER_MAX_INSTRUMENTS": str(CAPACITY),
        "LOG_LEVEL": "INFO",  # the "started" line carries the port
    }
    env.pop("SERVICE_TOKEN", None)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    prefix = folder / "subscription" if PROFILE else None
    argv = ["-m", "bench._profiled_subscription", str(prefix)] if prefix else ["-m", "services.subscription"]
    return spawn(
        "subscription", argv, env, folder / "subscription.log", service_started, prefix, timeout=SERVICE_START_SECONDS
    )


def _accounts_phase(
    report: Report, folder: Path, conninfo: str, registry_address: str, pairs: list[tuple[str, str]]
) -> None:
    """6. The fill with two accounts against one (bench.subscription_accounts)."""
    from bench import subscription_accounts

    def start(accounts: int, database: str) -> Child:
        return _start_service(folder, database, registry_address, accounts)

    subscription_accounts.run(report, start, conninfo, registry_address, pairs)


def run(report: Report) -> None:
    from services.registry.sources import from_generator

    with tempfile.TemporaryDirectory(prefix="bench-subscription-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        with bench_database(folder, "bench_subscription") as conninfo:
            report.note(f"embedded Postgres + migrated database in {time.perf_counter() - started:.1f} s")
            master = from_generator(folder / "masters", TRADING_DATE, SEED, "full")

            with registry_child(folder, conninfo, master) as registry:
                ready = registry.ready
                report.add("subscription.master_rows", ready["rows"])
                report.note(
                    f"registry process ready at {ready['address']}, master loaded in {ready['load_seconds']:.1f} s"
                )

                service = _start_service(folder, conninfo, ready["address"])
                try:
                    rss = status_kib(service.pid)
                    report.note(
                        f"subscription process pid {service.pid} at {service.address}, "
                        f"RSS at start {rss['VmRSS'] / 1024:.0f} MB"
                    )
                    pairs = asyncio.run(_client(report, service, ready["address"]))
                finally:
                    service.stop(SERVICE_STOP_SECONDS)
                    report.note(
                        f"subscription process exit code {service.process.returncode}; log "
                        f"{service.log_path.stat().st_size / 1e6:.1f} MB of JSON lines"
                    )
                    errors = service.errors()
                    if errors:
                        report.note(
                            f"{len(errors)} ERROR/Traceback lines in the subscription log; first: {errors[0][:500]}"
                        )
                if PROFILE:
                    _report_profiles(service)
                _accounts_phase(report, folder, conninfo, ready["address"], pairs)
