"""The simulator as the feed bench runs it: a copy of the master holding only the options
the bench subscribes (so it starts in a second), its command line (paced or burst, caps,
send stamps), and the packets it has sent (its control port)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from bench.children import Child
from bench.feed.procs import PROFILE, Children, http_json
from bench.upstream import SIMULATOR_MODULE, SIMULATOR_READY

_OPTION_KINDS = {"OPTIDX", "OPTSTK", "OPTFUT", "OPTCUR"}


def sim_master(folder: Path, csv_path: Path, prices_path: Path, option_ids: set[int], name: str) -> Path:
    """A copy of the master for the simulator: every non-option row, and the option rows
    whose security id is in `option_ids` (ids and prices are the registry's)."""
    out = folder / f"{name}.csv"
    kept: set[str] = set()
    with csv_path.open(newline="", encoding="utf-8") as src, out.open("w", newline="", encoding="utf-8") as dst:
        reader = csv.reader(src)
        writer = csv.writer(dst)
        header = next(reader)
        writer.writerow(header)
        kind, sid = header.index("SEM_INSTRUMENT_NAME"), header.index("SEM_SMST_SECURITY_ID")
        for row in reader:
            if row[kind] not in _OPTION_KINDS or int(row[sid]) in option_ids:
                writer.writerow(row)
                kept.add(row[sid])
    with (
        prices_path.open(newline="", encoding="utf-8") as src,
        (folder / f"{name}.prices.csv").open("w", newline="", encoding="utf-8") as dst,
    ):
        reader = csv.reader(src)
        writer = csv.writer(dst)
        header = next(reader)
        writer.writerow(header)
        sid = header.index("SECURITY_ID")
        for row in reader:
            if row[sid] in kept:
                writer.writerow(row)
    return out


def start_simulator(
    children: Children,
    name: str,
    master: Path,
    port: int,
    *,
    burst: bool,
    rate: float,
    ticks_per_second: float = 1.0,
    extra: Sequence[str] = (),
) -> Child:
    """The simulator CLI; `rate` sets both caps (per connection and in total). Returns once
    it has logged its ready line (its feed and control ports are listening by then)."""
    args = [
        "--host", "127.0.0.1", "--port", str(port), "--control-port", "0", "--master", str(master),
        "--connection-rate-cap", f"{rate}", "--total-rate-cap", f"{rate}", "--ticks-per-second", f"{ticks_per_second}",
        "--seed", "1", "--log-level", "INFO", *extra,
    ]  # fmt: skip
    if burst:
        args.append("--burst")
    prefix = children.folder / name if PROFILE else None
    argv = ["-m", "bench.feed.profiled", str(prefix), "simulator", *args] if prefix else ["-m", SIMULATOR_MODULE, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIM_")}  # keeps BENCH_PROFILE
    return children.spawn(name, argv, env, lambda r: r.get("msg") == SIMULATOR_READY, prefix)


def paced_caps(rate: float) -> float:
    """The simulator's rate caps for a paced run: room for catching up, and high enough that
    the debt a subscription burst leaves in its token buckets (every prev-close and snapshot
    packet is charged) is paid back in well under a second; the pacing (ticks per second per
    instrument) is what sets the offered rate."""
    return max(1.5 * rate, 100_000.0)


def sim_packets(sim: Child) -> int:
    """Packets the simulator has sent since it started."""
    return int(http_json(f"http://127.0.0.1:{sim.info['control_port']}/health")["packets_sent"])
