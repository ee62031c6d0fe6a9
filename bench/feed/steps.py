"""One offered rate of the end-to-end part, measured twice in a row on the same terminal
processes: the system under test (simulator -> 5 shards -> gateway -> terminals) and the
reference fan-out (simulator -> one process -> terminals). Each gets a simulator started for
the rate (its pacing is set at start) on its own port, so the other one never reads it; the
subscription burst passes (catch-up, warm-up), then the terminals measure a window, and the
backlog drains before the next measurement."""

from __future__ import annotations

import asyncio
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.children import Child, cpu_seconds
from bench.feed.latency import hist_ms, histogram_quantiles, loop_lag, merge
from bench.feed.piped import Piped
from bench.feed.procs import Children, metrics
from bench.feed.sim import paced_caps, sim_packets, start_simulator
from bench.feed.stack import wait_subscribed
from bench.machine import MachineSampler, MachineWindow
from bench.report import Report

E2E_WINDOW_SECONDS = float(os.environ.get("BENCH_E2E_WINDOW", 6.0))
E2E_WARMUP_SECONDS = 1.5  # after the system has caught up with the subscription burst
E2E_CATCH_UP_SECONDS = 20.0  # at most: the window measures the steady state, not the burst
DRAIN_SECONDS = 40.0
DELIVERED_VS_REFERENCE = 0.95  # ours / the reference's, at least
P99_VS_REFERENCE = 1.5  # ours / the reference's, at most


@dataclass
class Measured:
    """What the terminals got over one window, and what it cost."""

    rate: float
    delivered: float  # ticks/s
    p50: float
    p99: float
    max: float
    gaps: int
    sent: float  # simulator packets/s
    shares: dict[str, float]  # CPU seconds per second, per process
    system: tuple[str, ...]  # the processes measured (the rest is the load)
    merged: dict[str, Any]
    machine: MachineWindow

    @property
    def system_share(self) -> float:
        return sum(self.shares[k] for k in self.system)

    @property
    def cpu_per_tick_us(self) -> float:
        return self.system_share / self.delivered * 1e6 if self.delivered else math.nan


@dataclass
class Step:
    """One offered rate: ours, and the reference's (None if it could not be measured)."""

    ours: Measured
    reference: Measured | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ours.rate

    def ratio(self, name: str) -> float:
        if self.reference is None:
            return math.nan
        mine, theirs = getattr(self.ours, name), getattr(self.reference, name)
        return float(mine / theirs) if theirs else math.nan

    @property
    def meets(self) -> bool:
        return (
            self.ratio("delivered") >= DELIVERED_VS_REFERENCE
            and self.ratio("p99") <= P99_VS_REFERENCE
            and self.ours.gaps == 0
        )


@dataclass
class Rig:
    """Everything a step runs on, started once by the end-to-end part."""

    children: Children
    sim_master: Path
    sim_port: int  # the shards' simulator
    reference_sim_port: int  # the reference's simulator
    total: int  # instruments subscribed
    shards: list[Child]
    shard_addresses: list[str]
    loads: list[int]
    gateway: Child
    terminals: Piped
    reference: Piped

    def gateway_metrics(self) -> dict[str, float]:
        return metrics(self.gateway.info["metrics_port"])

    def gateway_applied(self) -> float:
        return self.gateway_metrics().get("feed_gateway_packets_total", 0.0)

    def reference_counters(self) -> dict[str, Any]:
        return self.reference.ask("counters")[0]


def _simulator(rig: Rig, name: str, port: int, rate: float) -> Child:
    return start_simulator(
        rig.children,
        name,
        rig.sim_master,
        port,
        burst=False,
        rate=paced_caps(rate),
        ticks_per_second=rate / rig.total,
        extra=["--stamp-send-time"],
    )


def _catch_up(sim: Child, applied: Callable[[], float], rate: float) -> float:
    """Until what the system applied is within 50 ms of ticks of what the simulator sent (the
    subscription sends a prev close and a snapshot per instrument, a burst not to measure);
    returns how far behind it still was."""
    deadline = time.perf_counter() + E2E_CATCH_UP_SECONDS
    while time.perf_counter() < deadline:
        if applied() >= sim_packets(sim) - max(200.0, 0.05 * rate):
            break
        time.sleep(0.2)
    return sim_packets(sim) - applied()


def _window(
    rig: Rig, sim: Child, name: str, target: int, pids: dict[str, int], rate: float, system: tuple[str, ...]
) -> Measured:
    """The terminals' window over one target's streams (0: the gateway, 1: the reference), with
    the CPU of every process and the machine's state over it."""
    pids = {**pids, "simulator": sim.pid, **{f"terminals{n}": p for n, p in enumerate(rig.terminals.pids())}}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    sent0, t0 = sim_packets(sim), time.perf_counter()
    rig.terminals.ask("window", {"name": name, "target": target})
    machine = MachineSampler().start()
    time.sleep(E2E_WINDOW_SECONDS)
    summaries = [a["summary"] for a in rig.terminals.ask("end")]
    elapsed = time.perf_counter() - t0
    box = machine.stop()
    sent1 = sim_packets(sim)
    shares = {k: (cpu_seconds(p) - cpu0[k]) / elapsed for k, p in pids.items()}
    merged = merge(summaries)
    latency = merged["latency"]
    return Measured(
        rate=rate,
        delivered=merged["ticks"] / merged["seconds"],
        p50=hist_ms(latency, 50),
        p99=hist_ms(latency, 99),
        max=hist_ms(latency, 100),
        gaps=merged["gaps"],
        sent=(sent1 - sent0) / elapsed,
        shares=shares,
        system=system,
        merged=merged,
        machine=box,
    )


def _until_still(read: Callable[[], tuple[float, ...]], limit: float = DRAIN_SECONDS) -> float:
    """Until `read()` has not changed for 0.6 s (a backlog drained after the simulator
    stopped, so the next measurement starts clean); the seconds it took (limit: gave up)."""
    started = time.perf_counter()
    last: tuple[float, ...] | None = None
    still_since = started
    while time.perf_counter() - started < limit:
        now = read()
        if now != last:
            last, still_since = now, time.perf_counter()
        elif time.perf_counter() - still_since >= 0.6:
            return still_since - started
        time.sleep(0.2)
    return limit


def measure_ours(report: Report, rig: Rig, rate: float) -> Measured:
    """The system under test at `rate`: the simulator restarted, the shards reconnect."""
    name = f"sim-e2e-{rate:.0f}"
    applied_before = rig.gateway_applied()
    sim = _simulator(rig, name, rig.sim_port, rate)
    try:
        asyncio.run(wait_subscribed(rig.shard_addresses, rig.loads))
        lag = _catch_up(sim, lambda: rig.gateway_applied() - applied_before, rate)
        time.sleep(E2E_WARMUP_SECONDS)
        profiled = (sim, rig.gateway, rig.shards[0])
        for child in profiled:
            child.profile_phase(f"3. start-up and warm-up of {rate:.0f}/s")  # so the window's profile is its own
        metrics0 = rig.gateway_metrics()
        pids = {"gateway": rig.gateway.pid, **{f"shard{i}": s.pid for i, s in enumerate(rig.shards)}}
        measured = _window(rig, sim, name, 0, pids, rate, tuple(k for k in pids))
        metrics1 = rig.gateway_metrics()
        for child in profiled:
            child.profile_phase(f"3. end to end at {rate:.0f}/s")
    finally:
        sim.stop()
    names = ("feed_gateway_packets_total", "feed_gateway_ticks_sent_total")
    drain = _until_still(lambda: tuple(rig.gateway_metrics().get(n, 0.0) for n in names))
    _note_ours(report, rig, measured, metrics0, metrics1, lag, drain)
    return measured


def measure_reference(report: Report, rig: Rig, rate: float) -> Measured:
    """The reference fan-out at `rate`, on its own simulator started for it."""
    name = f"sim-reference-{rate:.0f}"
    before = rig.reference_counters()["packets"]
    sim = _simulator(rig, name, rig.reference_sim_port, rate)
    try:
        connected = rig.reference.ask("connect", {"port": rig.reference_sim_port})[0]
        lag = _catch_up(sim, lambda: rig.reference_counters()["packets"] - before, rate)
        time.sleep(E2E_WARMUP_SECONDS)
        pids = {"reference": rig.reference.pids()[0]}
        measured = _window(rig, sim, name, 1, pids, rate, ("reference",))
    finally:
        try:
            rig.reference.ask("disconnect")
        finally:
            sim.stop()
    drain = _until_still(lambda: (float(rig.reference_counters()["ticks_sent"]),))
    _note_measured(report, "reference", measured)
    report.note(
        f"  reference: {connected['connections']} connections to the simulator (one process), subscribed in "
        f"{connected['seconds']:.1f} s; {lag:.0f} packets behind the simulator before the warm-up; backlog drained "
        f"{drain:.1f} s after the simulator stopped"
    )
    return measured


def _note_measured(report: Report, label: str, m: Measured) -> None:
    merged = m.merged
    report.note(
        f"{label} at {m.rate:.0f}/s offered: simulator sent {m.sent:.0f}/s, terminals got {m.delivered:.0f} ticks/s "
        f"in {merged['batches'] / merged['seconds']:.0f} batches/s ({merged['ticks'] / max(1, merged['batches']):.1f} "
        f"ticks per batch); latency p50 {m.p50:.1f} p99 {m.p99:.1f} max {m.max:.1f} ms; gaps {m.gaps} "
        f"({merged['gap_events']} events); streams open {merged['streams_open']}, stream errors "
        f"{dict(merged['errors']) or 'none'}" + (f", events {dict(merged['events'])}" if merged["events"] else "")
    )
    load = sum(v for k, v in m.shares.items() if k not in m.system)
    report.note(
        "  CPU share: "
        + ", ".join(f"{k} {v:.2f}" for k, v in m.shares.items())
        + f"; total {sum(m.shares.values()):.2f} of {m.machine.cores} cores, of which the load (simulator and "
        f"terminals) {load:.2f} and the system measured ({', '.join(m.system)}) {m.system_share:.2f}: "
        f"{m.cpu_per_tick_us:.1f} us of CPU per delivered tick"
    )
    report.note("  " + m.machine.describe())


def _note_ours(
    report: Report,
    rig: Rig,
    m: Measured,
    metrics0: dict[str, float],
    metrics1: dict[str, float],
    lag: float,
    drain: float,
) -> None:
    merged = m.merged
    elapsed = E2E_WINDOW_SECONDS
    applied = metrics1.get("feed_gateway_packets_total", 0) - metrics0.get("feed_gateway_packets_total", 0)
    conflated = metrics1.get("feed_gateway_conflated_total", 0) - metrics0.get("feed_gateway_conflated_total", 0)
    _note_measured(report, "ours", m)
    report.note(
        f"  gateway applied {applied / elapsed:.0f}/s, conflated {conflated:.0f}; {lag:.0f} packets behind the "
        f"simulator before the warm-up; backlog drained {drain:.1f} s after the simulator stopped; gateway RSS "
        f"{rig.gateway.rss_mb():.0f} MB"
    )
    report.note(
        f"  split (sampled): simulator send -> shard receipt p50 {hist_ms(merged['sim_part'], 50):.1f} p99 "
        f"{hist_ms(merged['sim_part'], 99):.1f} ms; shard receipt -> terminal p50 "
        f"{hist_ms(merged['shard_part'], 50):.1f} p99 {hist_ms(merged['shard_part'], 99):.1f} ms, of which shard "
        f"receipt -> gateway send (TickBatch.sent_at) p50 {hist_ms(merged['gateway_part'], 50):.1f} p99 "
        f"{hist_ms(merged['gateway_part'], 99):.1f} ms; per batch, gateway send -> terminal p50 "
        f"{hist_ms(merged['transit'], 50):.1f} p99 {hist_ms(merged['transit'], 99):.1f} ms"
    )
    report.note(
        f"  gateway event loop: {loop_lag(metrics0, metrics1)}; at the gateway, ingest lag "
        f"{histogram_quantiles(metrics0, metrics1, 'feed_gateway_ingest_lag_seconds')}, batch wait "
        f"{histogram_quantiles(metrics0, metrics1, 'feed_gateway_batch_wait_seconds')}, write "
        f"{histogram_quantiles(metrics0, metrics1, 'feed_gateway_batch_write_seconds')}"
    )


def measure_step(report: Report, rig: Rig, rate: float) -> Step:
    """Ours, then the reference's, at one rate; a reference that fails is reported and the
    step keeps our figures."""
    step = Step(measure_ours(report, rig, rate))
    try:
        step.reference = measure_reference(report, rig, rate)
    except Exception as error:
        traceback.print_exc()
        report.note(f"!! the reference at {rate:.0f}/s failed: {type(error).__name__}: {error}")
    if step.reference is not None:
        report.note(
            f"  ours / reference at {rate:.0f}/s: delivered {step.ratio('delivered'):.2f}x, p99 "
            f"{step.ratio('p99'):.2f}x, CPU per delivered tick {step.ratio('cpu_per_tick_us'):.2f}x"
        )
    return step
