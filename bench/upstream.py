"""The Dhan side bench drives: the feed simulator (its module, run as `python -m`, its
catalog and its entry point) and the Dhan codec. The only module of bench that names where
they live, so a move is repointed here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.feed import codec as codec

SIMULATOR_MODULE = "services.feed.simulator"  # python -m SIMULATOR_MODULE [args]
SIMULATOR_READY = "feed simulator listening"  # its ready log line


def simulator_equities(master: Path) -> list[tuple[str, int]]:
    """(segment, security id) of every equity in a master, as the simulator reads it."""
    from services.feed.simulator.catalog import Catalog

    return sorted(c.key for c in Catalog.load(master).contracts() if c.kind == "equity")


def simulator_main(args: Sequence[str]) -> None:
    """The simulator's command line, in this process (bench.feed.profiled)."""
    from services.feed.simulator.__main__ import main

    main(args)
