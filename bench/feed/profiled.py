"""`python -m bench.feed.profiled PREFIX ROLE [ARGS...]`: a feed process under cProfile, for
bench.feed when BENCH_PROFILE is set. ROLE is `shard` or `gateway` (what
`python -m services.feed ROLE` runs, same environment) or `simulator` (ARGS are the
simulator's command line). Behaviour is unchanged; only the profiler is added.

SIGUSR1 writes the profile gathered since the previous SIGUSR1 (or the start) to
PREFIX.<n>.prof and starts a fresh one, so the bench can profile each measured window on its
own; the rest is written to PREFIX.last.prof when the process stops (SIGTERM).

Garbage-collector pauses are timed too (gc.callbacks: a clock read per collection) and
written with each profile as PREFIX.<n>.gc.json: per generation, collections, total and
longest pause in ms, and the pauses of 10 ms or more (generation, wall ms, CPU ms of the
collecting thread, objects collected). BENCH_PROFILE=gc records only
those (no cProfile, so the process runs at full speed).
"""

from __future__ import annotations

import cProfile
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType


class GcPauses:
    def __init__(self) -> None:
        self.started = self.started_cpu = 0.0
        self.reset()

    def reset(self) -> None:
        self.stats = {g: [0, 0.0, 0.0] for g in (0, 1, 2)}  # collections, total ms, longest ms
        self.long: list[tuple[int, float, float, int]] = []  # (generation, wall ms, CPU ms, objects collected)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            self.started_cpu = time.thread_time()
            return
        ms = (time.perf_counter() - self.started) * 1000.0
        entry = self.stats[info["generation"]]
        entry[0] += 1
        entry[1] += ms
        entry[2] = max(entry[2], ms)
        if ms >= 10.0:  # wall ms, and the CPU ms this thread spent in it (less: it was preempted)
            cpu = (time.thread_time() - self.started_cpu) * 1000.0
            self.long.append((info["generation"], round(ms, 1), round(cpu, 1), info["collected"]))

    def dump(self, path: str) -> None:
        with open(path + ".tmp", "w") as f:
            json.dump(
                {"generations": self.stats, "long_pauses": self.long[:200], "tracked_objects": len(gc.get_objects())}, f
            )
        os.replace(path + ".tmp", path)
        self.reset()


def run_profiled(prefix: str, run: Callable[[], object], *, cprofile: bool = True) -> None:
    """Runs `run()` with GC pauses timed and, with `cprofile`, under cProfile; SIGUSR1 writes
    what was gathered since the previous one (see the module docstring)."""
    profiler = cProfile.Profile()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    dumps = [0]

    def dump(signum: int, frame: FrameType | None) -> None:
        n = dumps[0]
        pauses.dump(f"{prefix}.{n}.gc.json")
        if cprofile:
            profiler.disable()
            profiler.dump_stats(f"{prefix}.{n}.prof.tmp")
            profiler.clear()
            profiler.enable()
        else:
            with open(f"{prefix}.{n}.prof.tmp", "w"):
                pass  # an empty marker: nothing profiled
        os.replace(f"{prefix}.{n}.prof.tmp", f"{prefix}.{n}.prof")  # readers never see half a file
        dumps[0] += 1

    signal.signal(signal.SIGUSR1, dump)
    if cprofile:
        profiler.enable()
    try:
        run()
    finally:
        profiler.disable()
        if cprofile:
            profiler.dump_stats(f"{prefix}.last.prof")


def main(prefix: str, role: str, args: list[str]) -> None:
    if role == "simulator":
        from bench.upstream import simulator_main

        run: Callable[[], object] = lambda: simulator_main(args)  # noqa: E731
    elif role in ("shard", "gateway"):
        from services.feed.__main__ import main as feed_main  # as `python -m services.feed ROLE`, GC tuning included

        run = lambda: feed_main(role)  # noqa: E731
    else:
        sys.exit(f"unknown role {role!r}: shard, gateway or simulator")
    run_profiled(prefix, run, cprofile=os.environ.get("BENCH_PROFILE", "1") != "gc")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
