"""`python -m bench._profiled_subscription PREFIX`: the real subscription service
(`services.subscription.server.serve`) under cProfile, for bench.subscription when
BENCH_PROFILE=1. Behaviour is unchanged; only the profiler is added.

SIGUSR1 writes the profile gathered since the previous SIGUSR1 (or the start) to
PREFIX.<n>.prof and starts a fresh one, so the bench can profile each phase on its own; the
rest is written to PREFIX.last.prof when the service stops (SIGTERM).
"""

from __future__ import annotations

import cProfile
import signal
import sys
from types import FrameType


def main(prefix: str) -> None:
    profiler = cProfile.Profile()
    dumps = [0]

    def dump(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(f"{prefix}.{dumps[0]}.prof.tmp")
        import os

        os.replace(f"{prefix}.{dumps[0]}.prof.tmp", f"{prefix}.{dumps[0]}.prof")  # readers never see half a file
        dumps[0] += 1
        profiler.clear()
        profiler.enable()

    signal.signal(signal.SIGUSR1, dump)
    from services.subscription.server import serve

    profiler.enable()
    try:
        serve()
    finally:
        profiler.disable()
        profiler.dump_stats(f"{prefix}.last.prof")


if __name__ == "__main__":
    main(sys.argv[1])
