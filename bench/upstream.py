"""The feed simulator as bench drives it: its module (run as `python -m`), its ready line, its
catalog and its entry point, named in this one module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

SIMULATOR_MODULE = "simulator"  # python -m SIMULATOR_MODULE [args]
SIMULATOR_READY = "feed simulator listening"  # its ready log line


def simulator_equities(master: Path) -> list[tuple[str, int]]:
    """(segment, security id) of every equity in a master, as the simulator reads it."""
    from simulator.catalog import Catalog

    return sorted(c.key for c in Catalog.load(master).contracts() if c.kind == "equity")


def simulator_main(args: Sequence[str]) -> None:
    """The simulator's command line, in this process (bench.feed.profiled)."""
    from simulator.__main__ import main

    main(args)
