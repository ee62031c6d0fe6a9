"""The whole machine over a bench window, from /proc/stat: how much of it was idle, how long
its run queue was and how often it switched tasks. A latency measured on a saturated
machine says as much about the machine as about the code; these figures say which."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class CpuTimes:
    idle: int  # idle + iowait, in clock ticks over all cores
    kernel: int  # system + irq + softirq
    total: int
    switches: int  # context switches since boot
    at: float  # time.perf_counter()


@dataclass(frozen=True)
class MachineWindow:
    cores: int
    idle_share: float  # of all cores
    kernel_share: float
    run_queue_mean: float  # runnable tasks, sampled every SAMPLE_SECONDS
    run_queue_max: int
    switches_per_second: float

    def describe(self) -> str:
        return (
            f"machine over the window: idle {self.idle_share:.0%} of {self.cores} cores (kernel time "
            f"{self.kernel_share:.0%}), run queue mean {self.run_queue_mean:.1f} max {self.run_queue_max} "
            f"runnable tasks for {self.cores} cores, {self.switches_per_second / 1000:.0f}k context switches/s"
        )


def read_cpu_times(path: str = "/proc/stat") -> CpuTimes:
    idle = kernel = total = switches = 0
    with open(path) as stat:
        for line in stat:
            if line.startswith("cpu "):
                # user nice system idle iowait irq softirq steal (guest time is inside user)
                values = [int(v) for v in line.split()[1:9]]
                idle, kernel, total = values[3] + values[4], values[2] + values[5] + values[6], sum(values)
            elif line.startswith("ctxt "):
                switches = int(line.split()[1])
    return CpuTimes(idle, kernel, total, switches, time.perf_counter())


def runnable_tasks(path: str = "/proc/stat") -> int:
    """Tasks running or ready to run now, less the one reading this."""
    with open(path) as stat:
        for line in stat:
            if line.startswith("procs_running "):
                return max(0, int(line.split()[1]) - 1)
    return 0


class MachineSampler:
    """Samples the run queue in a thread from start() until stop(), which returns the
    window's figures."""

    def __init__(self) -> None:
        self._samples: list[int] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="machine-sampler", daemon=True)
        self._start: CpuTimes | None = None

    def start(self) -> MachineSampler:
        self._start = read_cpu_times()
        self._thread.start()
        return self

    def stop(self) -> MachineWindow:
        end = read_cpu_times()
        self._stopping.set()
        self._thread.join(timeout=1.0)
        assert self._start is not None, "stop() before start()"
        ticks = max(1, end.total - self._start.total)
        samples = self._samples or [0]
        return MachineWindow(
            cores=os.cpu_count() or 1,
            idle_share=(end.idle - self._start.idle) / ticks,
            kernel_share=(end.kernel - self._start.kernel) / ticks,
            run_queue_mean=sum(samples) / len(samples),
            run_queue_max=max(samples),
            switches_per_second=(end.switches - self._start.switches) / max(1e-9, end.at - self._start.at),
        )

    def _sample(self) -> None:
        while not self._stopping.wait(SAMPLE_SECONDS):
            self._samples.append(runnable_tasks())
