"""bench.machine: the machine-wide figures printed next to the end-to-end latency."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.machine import MachineSampler, read_cpu_times, runnable_tasks

STAT = """cpu  100 5 30 800 20 1 4 0 0 0
cpu0 50 2 15 400 10 1 2 0 0 0
intr 1 2 3
ctxt 123456
procs_running 4
procs_blocked 0
"""


def test_cpu_times_and_run_queue_are_read_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    times = read_cpu_times(str(stat))
    assert (times.idle, times.kernel, times.total, times.switches) == (820, 35, 960, 123456)
    assert runnable_tasks(str(stat)) == 3, "the reading task itself is not counted"


def test_a_busy_process_shows_in_the_window() -> None:
    sampler = MachineSampler().start()
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass"]
    )
    busy.wait(timeout=10)
    window = sampler.stop()
    assert window.run_queue_max >= 1
    assert 0.0 <= window.idle_share < 1.0 and 0.0 <= window.kernel_share < 1.0
    assert window.switches_per_second > 0
    assert "runnable tasks" in window.describe()
