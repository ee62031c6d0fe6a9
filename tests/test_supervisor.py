"""The stack's restart policy, on an injected clock and sleep: no real waiting."""

from __future__ import annotations

import asyncio

import pytest

from services.stack.supervisor import Backoff, Exit, Supervised, describe


def test_backoff_grows_caps_and_resets_after_a_healthy_run() -> None:
    backoff = Backoff(initial=1, cap=8, healthy_run=60)
    assert [backoff.delay(uptime=0.5) for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    assert backoff.delay(uptime=60) == 1
    assert backoff.delay(uptime=59) == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class CrashingChild:
    """Runs for the given durations (on the fake clock), exiting with status 1 after each;
    then runs until stopped."""

    name = "crasher"

    def __init__(self, clock: FakeClock, runs: list[float]) -> None:
        self._clock = clock
        self._runs = list(runs)
        self._stopped = asyncio.Event()
        self.in_last_run = asyncio.Event()
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1

    async def wait(self) -> Exit:
        if self._runs:
            self._clock.now += self._runs.pop(0)
            return Exit(1, describe(1))
        self.in_last_run.set()
        await self._stopped.wait()
        return Exit(0, describe(0))

    async def stop(self) -> None:
        self._stopped.set()


async def test_a_crashing_child_is_restarted_with_growing_capped_delays_reset_by_a_healthy_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    # Four quick crashes, a healthy run, one more quick crash.
    child = CrashingChild(clock, [0.1, 0.1, 0.1, 0.1, 120.0, 0.1])
    supervised = Supervised(child, Backoff(initial=1, cap=4, healthy_run=60), clock=clock, sleep=clock.sleep)
    await supervised.start()
    await child.in_last_run.wait()
    await supervised.stop()
    assert clock.slept == [1, 2, 4, 4, 1, 2]
    assert child.starts == 7
    restarts = [r for r in caplog.records if r.getMessage() == "restarting"]
    assert [(vars(r)["child"], vars(r)["exit_status"]) for r in restarts] == [("crasher", 1)] * 6


async def test_stop_during_the_back_off_restarts_nothing() -> None:
    clock = FakeClock()
    child = CrashingChild(clock, [0.1])
    backing_off, never = asyncio.Event(), asyncio.Event()

    async def sleep_forever(seconds: float) -> None:
        backing_off.set()
        await never.wait()

    supervised = Supervised(child, clock=clock, sleep=sleep_forever)
    await supervised.start()
    await backing_off.wait()
    await supervised.stop()
    assert child.starts == 1 and supervised.restarts == 1


def test_an_exit_status_reads_as_words() -> None:
    assert describe(-9) == "killed by SIGKILL"
    assert describe(0) == "exited with status 0"
