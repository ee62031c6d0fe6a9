"""`python -m bench._profiled_feed PREFIX ROLE [ARGS...]`: a feed process under cProfile, for
bench.feed when BENCH_PROFILE is set. ROLE is `shard` or `gateway` (what
`python -m services.feed ROLE` runs, same environment) or `simulator` (ARGS are the
simulator's command line). Behaviour is unchanged; only the profiler is added.

SIGUSR1 writes the profile gathered since the previous SIGUSR1 (or the start) to
PREFIX.<n>.prof and starts a fresh one, so the bench can profile each measured window on its
own; the rest is written to PREFIX.last.prof when the process stops (SIGTERM).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import signal
import sys
from types import FrameType


def main(prefix: str, role: str, args: list[str]) -> None:
    profiler = cProfile.Profile()
    dumps = [0]

    def dump(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(f"{prefix}.{dumps[0]}.prof.tmp")
        os.replace(f"{prefix}.{dumps[0]}.prof.tmp", f"{prefix}.{dumps[0]}.prof")  # readers never see half a file
        dumps[0] += 1
        profiler.clear()
        profiler.enable()

    signal.signal(signal.SIGUSR1, dump)
    if role == "simulator":
        from services.feed.simulator.__main__ import main as simulator_main

        run = lambda: simulator_main(args)  # noqa: E731
    elif role in ("shard", "gateway"):
        from services.common.server import serve_service
        from services.feed import gateway_server, shard_server

        module = shard_server if role == "shard" else gateway_server
        run = lambda: asyncio.run(  # noqa: E731 - as services/feed/__main__.py does it
            serve_service(f"feed-{role}", module.DEFAULT_PORT, module.create, needs_database=role == "gateway")
        )
    else:
        sys.exit(f"unknown role {role!r}: shard, gateway or simulator")
    profiler.enable()
    try:
        run()
    finally:
        profiler.disable()
        profiler.dump_stats(f"{prefix}.last.prof")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
