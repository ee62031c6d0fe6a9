"""Runs the benchmarks: `python -m bench` (all) or `python -m bench registry [...]`.

Each module in BENCHMARKS has `run(report)`, which measures and adds figures to the report
as it goes. The run ends with one table of every figure, its target and PASS/MISS.
Benchmarks report, they do not gate: the exit status is 0 even when a figure misses its
target, and 1 only when a benchmark crashed (2 for an unknown benchmark name).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

from bench.report import Report, summary_table

# Run in this order; add e.g. "subscription", "feed" as their modules appear under bench/.
BENCHMARKS: tuple[str, ...] = ("registry", "codec", "chain", "subscription", "feed", "terminal")


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(f"usage: python -m bench [{' | '.join(BENCHMARKS)} ...]")
        return 0
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {list(BENCHMARKS)}", file=sys.stderr)
        return 2

    report = Report()
    crashed: list[str] = []
    started = time.perf_counter()
    for name in names:
        print(f"== bench.{name}", flush=True)
        began = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            module.run(report)
        except (Exception, KeyboardInterrupt) as error:  # one crashed benchmark must not hide the others
            crashed.append(name)
            traceback.print_exc()
            print(f"!! bench.{name} CRASHED: {type(error).__name__}: {error}", flush=True)
            if isinstance(error, KeyboardInterrupt):
                break
        print(f"== bench.{name} done in {time.perf_counter() - began:.1f} s", flush=True)

    print()
    print(f"== summary ({len(report.figures)} figures, {time.perf_counter() - started:.1f} s)")
    summary_table(report.figures)
    missed = [f.name for f in report.figures if f.passed is False]
    print()
    print(
        f"PASS {sum(f.passed is True for f in report.figures)}  MISS {len(missed)}  "
        f"INFO {sum(f.passed is None for f in report.figures)}  crashed {crashed or 'none'}"
    )
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
