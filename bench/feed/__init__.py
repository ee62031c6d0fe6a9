"""Feed benchmark (`python -m bench feed`): 1. ingest against the simulator and a replay
(bench.feed.ingest), 2. a real shard process (bench.feed.shard), 3. end to end, simulator
-> shards -> gateway -> terminals, against a reference fan-out (bench.feed.e2e). What each
part measures and why: README.md, "What bench.feed measures".

Every process is real and separate, logs to a file in a temporary folder, and is stopped at
the end whatever happened; every wait is bounded. A part that crashes is reported and the
others still run and print their figures; the benchmark then counts as crashed.

Knobs (environment): BENCH_FEED_PARTS=1,2,3 (default all; 3 runs on 2's stack),
BENCH_E2E_RATE (the first offered rate, default 50,000 ticks/s), BENCH_E2E_STEPS (bisection
steps after it, default 4; 0 for one rate), BENCH_E2E_WINDOW (seconds measured per rate,
default 6), BENCH_TERMINAL_CHANNELS (gRPC channels per terminal process and target, default
4), BENCH_PROFILE=1 (simulator, shard 0 and gateway under cProfile: bench.feed.profiled) or
=gc (only their garbage-collector pauses, at full speed).
"""

from __future__ import annotations

import json
import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.children import Child
from bench.feed.procs import PROFILE, Children
from bench.report import Report, print_profile

PARTS = {int(p) for p in os.environ.get("BENCH_FEED_PARTS", "1,2,3").split(",") if p.strip()}


class PartsCrashed(RuntimeError):
    """One or more parts crashed (each was reported as it happened)."""


def _part(report: Report, crashed: list[str], name: str, body: Callable[[], None]) -> None:
    """Runs one part; a crash is printed and noted, and the next part still runs."""
    try:
        body()
    except Exception as error:
        traceback.print_exc()
        report.note(f"!! bench.feed {name} CRASHED: {type(error).__name__}: {error}")
        crashed.append(name)


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        folder = Path(tmp)
        children = Children(folder)
        crashed: list[str] = []
        try:
            _run_parts(report, children, folder, crashed)
        finally:
            children.stop_all()
            if PROFILE:
                _report_profiles(children)
        if crashed:
            raise PartsCrashed(f"crashed: {', '.join(crashed)} (the other parts' figures are above)")


def _run_parts(report: Report, children: Children, folder: Path, crashed: list[str]) -> None:
    from bench.feed.e2e import run_e2e
    from bench.feed.ingest import run_ingest
    from bench.feed.procs import free_port
    from bench.feed.shard import run_shard
    from bench.feed.sim import sim_master
    from bench.feed.stack import feed_stack, start_shard
    from bench.registry_child import SEED, TRADING_DATE
    from services.registry.sources import from_generator

    master = from_generator(folder / "masters", TRADING_DATE, SEED, "full")
    assert master.prices_path is not None, "the generated master has prices"
    prices = master.prices_path
    if 1 in PARTS:
        _part(report, crashed, "ingest", lambda: run_ingest(report, children, folder, master.csv_path, prices))
    if not PARTS & {2, 3}:
        return

    def on_the_stack() -> None:
        with feed_stack(report, children, folder, master) as stack:
            option_ids = {sid for _, sid in stack.keys}
            simulated = sim_master(folder, master.csv_path, prices, option_ids, "sim-master")
            sim_port = free_port()
            started: list[Child] = []

            def shard0() -> Child:
                """Shard 0, started once (by part 2 once its simulator runs) and kept for part 3."""
                if not started:
                    started.append(start_shard(children, stack, 0, sim_port))
                return started[0]

            if 2 in PARTS:
                _part(report, crashed, "shard", lambda: run_shard(report, children, stack, simulated, sim_port, shard0))
            if 3 in PARTS:
                _part(
                    report,
                    crashed,
                    "end to end",
                    lambda: run_e2e(report, children, folder, stack, simulated, sim_port, shard0()),
                )

    _part(report, crashed, "stack", on_the_stack)


def _report_profiles(children: Children) -> None:
    """Under BENCH_PROFILE: each profiled child's GC pauses and cProfile per phase."""
    for child in children.all:
        for phase, path in child.profiles:
            gc_path = Path(str(path)[: -len(".prof")] + ".gc.json")
            if gc_path.exists():
                data = json.loads(gc_path.read_text())
                gens = ", ".join(
                    f"gen{g}: {n} collections, {total:.0f} ms in all, longest {longest:.1f} ms"
                    for g, (n, total, longest) in data["generations"].items()
                )
                long = data["long_pauses"]
                print(
                    f"  --- GC pauses of {child.name}, phase {phase}: {gens}; {data['tracked_objects']} tracked "
                    f"objects at the end; pauses >= 10 ms [generation, wall ms, CPU ms, collected]: "
                    f"{len(long)} {long[:12]}"
                )
            if path.stat().st_size == 0:
                continue  # BENCH_PROFILE=gc: no cProfile
            print_profile(path, f"{child.name}, phase {phase}")
