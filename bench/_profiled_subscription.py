"""`python -m bench._profiled_subscription PREFIX`: the real subscription service
(`services.subscription.server.serve`) under cProfile, for bench.subscription when
BENCH_PROFILE=1. Behaviour is unchanged; only the profiler is added.

SIGUSR1 writes the profile gathered since the previous SIGUSR1 (or the start) to
PREFIX.<n>.prof and starts a fresh one, so the bench can profile each phase on its own; the
rest is written to PREFIX.last.prof when the service stops (SIGTERM). GC pauses are written
beside each profile, as bench.feed.profiled does.
"""

from __future__ import annotations

import sys

from bench.feed.profiled import run_profiled


def main(prefix: str) -> None:
    from services.subscription.server import serve

    run_profiled(prefix, serve)


if __name__ == "__main__":
    main(sys.argv[1])
