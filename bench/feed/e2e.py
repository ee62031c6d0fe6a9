"""Part 3 of bench.feed, end to end: shards 1-4 join shard 0, the gateway follows all five,
and the terminal processes hold STREAMS StreamTicks streams of PER_STREAM instruments each
(every filled instrument once) to the gateway and the same streams to the reference fan-out
(bench.feed.reference). Each offered rate is measured on both (bench.feed.steps): E2E_RATE
first, then (when it misses) a bisection towards the highest rate whose figures meet the
targets against the reference; last, E2E_RATE again while one more stream stalls
(bench.feed.stall)."""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from pathlib import Path

from bench.children import Child, service_started
from bench.feed.piped import Piped
from bench.feed.procs import PROFILE, Children, free_port, metrics, service_env
from bench.feed.reference import reference_child
from bench.feed.shard import SHARD_RSS_TARGET_MB
from bench.feed.stack import CAPACITY_CONNECTIONS, PER_CONNECTION, RPC_SECONDS, Stack, start_shard
from bench.feed.stall import report_stall, value_sizes
from bench.feed.steps import DELIVERED_VS_REFERENCE, P99_VS_REFERENCE, Rig, Step, measure_step
from bench.feed.terminal_child import terminal_child
from bench.report import Report

E2E_RATE = float(os.environ.get("BENCH_E2E_RATE", 50_000))  # ticks/s offered in total first
E2E_EXTRA_RATES = int(os.environ.get("BENCH_E2E_STEPS", 4))  # bisection steps after E2E_RATE (0: one rate)
STREAMS, PER_STREAM = 100, 250
TERMINAL_PROCESSES = 2
TERMINAL_CHANNELS = int(os.environ.get("BENCH_TERMINAL_CHANNELS", 4))  # per terminal process and target
GATEWAY_RSS_TARGET_MB = 400.0
SEED_SHUFFLE = 11
LIFETIME_SECONDS = 1200.0  # a piped child stops by itself after this long without a command


def _start_gateway(children: Children, folder: Path, stack: Stack, shard_addresses: list[str]) -> Child:
    env = service_env(
        DATABASE_URL=stack.conninfo,
        DATASERVER_DATA_DIR=str(folder),
        SUBSCRIPTION_ADDR=stack.subscription.address,
        REGISTRY_ADDR=stack.registry_address,
        GATEWAY_SHARD_ADDRS=",".join(shard_addresses),
    )
    prefix = folder / "gateway" if PROFILE else None
    argv = ["-m", "bench.feed.profiled", str(prefix), "gateway"] if prefix else ["-m", "services.feed", "gateway"]
    gateway = children.spawn("gateway", argv, env, service_started, prefix)
    asyncio.run(_gateway_ready(gateway.address, len(shard_addresses)))
    return gateway


async def _gateway_ready(address: str, shards: int, timeout: float = 30.0) -> None:
    """Until the gateway reaches every shard."""
    import grpc
    from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = feed_pb2_grpc.GatewayServiceStub(channel)
        deadline = time.monotonic() + timeout
        while True:
            reply = await stub.GetShardStatus(feed_pb2.GetShardStatusRequest(), timeout=RPC_SECONDS)
            if len(reply.shards) == shards and all(s.reachable for s in reply.shards):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway does not reach every shard: {reply}")
            await asyncio.sleep(0.2)


def _groups(keys: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The instruments in as few connections as the simulator allows (PER_CONNECTION each)."""
    count = max(1, math.ceil(len(keys) / PER_CONNECTION))
    return [keys[n::count] for n in range(count)]


def _start_terminals(folder: Path, addresses: list[str], streams: list[list[tuple[int, int]]]) -> Piped:
    terminals = Piped()
    for n in range(TERMINAL_PROCESSES):
        spec = {
            "addresses": addresses,
            "streams": streams[n::TERMINAL_PROCESSES],
            "channels": TERMINAL_CHANNELS,
            "stalled": streams[0] if n == 0 else [],  # the same instruments as a live stream
            "lifetime": LIFETIME_SECONDS,
        }
        terminals.start(terminal_child, f"bench-terminals-{n}", folder / f"terminals-{n}.log", spec)
    terminals.wait_ready()
    return terminals


def run_e2e(
    report: Report, children: Children, folder: Path, stack: Stack, sim_master: Path, sim_port: int, shard0: Child
) -> None:
    """Part 3: starts the rest of the system, the reference and the terminals, then the rates."""
    loads = [stack.shard_loads.get(i, 0) for i in range(CAPACITY_CONNECTIONS)]
    shards = [shard0] + [start_shard(children, stack, i, sim_port) for i in range(1, CAPACITY_CONNECTIONS)]
    shard_addresses = [f"127.0.0.1:{s.info['port']}" for s in shards]
    gateway = _start_gateway(children, folder, stack, shard_addresses)
    keys = list(stack.keys)
    random.Random(SEED_SHUFFLE).shuffle(keys)
    streams = [keys[i : i + PER_STREAM] for i in range(0, min(len(keys), STREAMS * PER_STREAM), PER_STREAM)]
    reference = Piped()
    terminals: Piped | None = None
    try:
        spec = {"groups": _groups(list(stack.keys)), "lifetime": LIFETIME_SECONDS}
        reference.start(reference_child, "bench-reference", folder / "reference.log", spec)
        (ready,) = reference.wait_ready()
        rss_idle = gateway.rss_mb()
        terminals = _start_terminals(folder, [gateway.address, ready["address"]], streams)
        report.note(
            f"{len(shards)} shard processes (instruments {loads}), gateway pid {gateway.pid}, reference pid "
            f"{ready['pid']}; {len(streams)} streams of {PER_STREAM} ({sum(len(s) for s in streams)} instruments) "
            f"to each in {TERMINAL_PROCESSES} processes x {TERMINAL_CHANNELS} channels, + 1 stalled stream of "
            f"{len(streams[0])} on its own channel; gateway RSS {rss_idle:.0f} MB before the streams, "
            f"{gateway.rss_mb():.0f} MB with them"
        )
        rig = Rig(
            children, sim_master, sim_port, free_port(), len(stack.keys), shards, shard_addresses, loads, gateway,
            terminals, reference,
        )  # fmt: skip
        _run_rates(report, rig, len(streams[0]))
    finally:
        if terminals is not None:
            terminals.stop()
        reference.stop()
        for name in [f"terminals-{n}" for n in range(TERMINAL_PROCESSES)] + ["reference"]:
            log = folder / f"{name}.log"
            if log.exists() and log.stat().st_size:
                report.note(f"{name}.log: {log.read_text(errors='replace')[-600:]}")


def _run_rates(report: Report, rig: Rig, stalled_size: int) -> None:
    """E2E_RATE, the bisection when it misses, then E2E_RATE again with a stalled stream; a
    rate that crashes ends the run of rates, and the figures of the rates measured before it
    are still reported."""
    steps: list[Step] = []
    try:
        first = measure_step(report, rig, E2E_RATE)
        steps.append(first)
        _report_first(report, rig, first)
        low, high = 0.0, E2E_RATE
        for _ in range(0 if first.meets else E2E_EXTRA_RATES):
            rate = round((low + high) / 2 if low else high / 2, -2)
            step = measure_step(report, rig, rate)
            steps.append(step)
            low, high = (rate, high) if step.meets else (low, rate)
    except Exception as error:  # the traceback is printed where the part is run
        report.note(f"!! the end-to-end rates stopped after {len(steps)} rate(s): {type(error).__name__}: {error}")
        raise
    finally:
        _report_rates(report, steps)
    if E2E_EXTRA_RATES:
        _stall_step(report, rig, stalled_size)


def _stall_step(report: Report, rig: Rig, stalled_size: int) -> None:
    """One more step at E2E_RATE while one more stream stalls, once every instrument's history
    is full, so the gateway's RSS over it shows what the stall costs. The reference carries no
    stalled stream, so this step's ratios are information, not targets."""
    rss_before = rig.gateway.rss_mb()
    (opened,) = rig.terminals.ask("stall", only=0)
    step = measure_step(report, rig, E2E_RATE)
    _stall_figures(report, rig, stalled_size, opened["summary"], rss_before)
    _report_step(report, "feed.e2e.with_stalled_stream", step, targets=False)


def _stall_figures(report: Report, rig: Rig, size: int, opened: dict[str, object], rss_before: float) -> None:
    rss_after = rig.gateway.rss_mb()
    before = metrics(rig.gateway.info["metrics_port"]).get("feed_gateway_conflated_total", 0.0)
    (resumed,) = rig.terminals.ask("resume", only=0)
    after = metrics(rig.gateway.info["metrics_port"]).get("feed_gateway_conflated_total", 0.0)
    report_stall(report, size, opened, resumed["summary"], rss_before, rss_after, after - before)


def _report_step(report: Report, prefix: str, step: Step, *, targets: bool = True) -> None:
    """A rate's figures: ours and the reference's (INFO), and ours against the reference's."""
    ref = step.reference
    report.add(f"{prefix}.delivered", step.ours.delivered, "ticks/s")
    report.add(f"{prefix}.p99_ms", step.ours.p99, "ms")
    report.add(f"{prefix}.reference.delivered", ref.delivered if ref else math.nan, "ticks/s")
    report.add(f"{prefix}.reference.p99_ms", ref.p99 if ref else math.nan, "ms")
    delivered_target, p99_target = (DELIVERED_VS_REFERENCE, P99_VS_REFERENCE) if targets else (None, None)
    report.add(f"{prefix}.delivered_vs_reference", step.ratio("delivered"), "x", target=delivered_target, op=">=")
    report.add(f"{prefix}.p99_vs_reference", step.ratio("p99"), "x", target=p99_target)
    report.add(f"{prefix}.cpu_per_tick_us", step.ours.cpu_per_tick_us, "us")
    report.add(f"{prefix}.reference.cpu_per_tick_us", ref.cpu_per_tick_us if ref else math.nan, "us")
    report.add(f"{prefix}.cpu_per_tick_vs_reference", step.ratio("cpu_per_tick_us"), "x")


def _report_first(report: Report, rig: Rig, first: Step) -> None:
    from services.feed.gateway.hub import HISTORY

    report.add("feed.e2e.offered", E2E_RATE, "ticks/s")
    report.add("feed.e2e.p50_ms", first.ours.p50, "ms")
    _report_step(report, "feed.e2e", first)
    report.add("feed.e2e.gaps", first.ours.gaps, target=0)
    gateway_rss, shard_rss = rig.gateway.rss_mb(), [s.rss_mb() for s in rig.shards]
    report.add("feed.e2e.gateway_rss_mb", gateway_rss, "MB", target=GATEWAY_RSS_TARGET_MB)
    report.add("feed.e2e.shard_rss_max_mb", max(shard_rss), "MB", target=SHARD_RSS_TARGET_MB)
    report.add("feed.e2e.machine_idle", first.ours.machine.idle_share * 100, "%")  # how saturated the box was
    report.add("feed.e2e.machine_run_queue", first.ours.machine.run_queue_mean, "tasks")
    raw, encoded = value_sizes()
    total = rig.total
    report.note(
        "shard RSS: "
        + ", ".join(f"#{i} {r:.0f} MB" for i, r in enumerate(shard_rss))
        + f"; gateway RSS peak {rig.gateway.hwm_mb():.0f} MB. A gateway Value of a Full packet holds {raw:.0f} B "
        f"(Value + raw packet) and {encoded:.0f} B encoded: {total} instruments x HISTORY {HISTORY} x "
        f"{raw + encoded:.0f} B = {total * HISTORY * (raw + encoded) / 2**20:.0f} MB once every history is full"
    )
    gateway_metrics = rig.gateway_metrics()
    report.note(
        "gateway metrics after the first rate: "
        + ", ".join(
            f"{k} {v:.0f}"
            for k, v in sorted(gateway_metrics.items())
            if k.startswith("feed_") and not k.endswith("_created")
        )
    )


def _report_rates(report: Report, steps: list[Step]) -> None:
    """The later rates' figures, the highest rate meeting the targets, every rate tried."""
    seen: set[str] = set()
    for n, s in enumerate(steps[1:], 1):
        prefix = f"feed.e2e.at_{s.rate:.0f}"
        prefix = prefix if prefix not in seen else f"{prefix}_{n}"
        seen.add(prefix)
        _report_step(report, prefix, s)
    if not steps:
        return
    best = max((s for s in steps if s.meets), key=lambda s: s.rate, default=None)
    report.add("feed.e2e.highest_rate_meeting_targets", best.rate if best else 0.0, "ticks/s")
    report.note(
        "rates tried (ours vs the reference): "
        + "; ".join(
            f"{s.rate:.0f} -> {s.ours.delivered:.0f}/s p99 {s.ours.p99:.1f} ms vs "
            + (f"{s.reference.delivered:.0f}/s p99 {s.reference.p99:.1f} ms" if s.reference else "no reference")
            + f", gaps {s.ours.gaps} {'OK' if s.meets else 'miss'}"
            for s in steps
        )
    )
