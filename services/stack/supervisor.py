"""Keeps one of the stack's children running: a child that exits (or stops answering) is
restarted after a back-off, as Kubernetes restarts a container (restartPolicy: Always)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("stack.supervisor")

# A local stack wants a crashed service back quickly; Kubernetes starts at 10 s and caps at 5 min.
INITIAL_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0
# A child that ran this long was healthy: its next failure starts the back-off over.
HEALTHY_RUN_SECONDS = 60.0
STOP_GRACE_SECONDS = 20.0


@dataclass
class Backoff:
    """Exponential delay between restarts, capped, reset after a healthy run."""

    initial: float = INITIAL_DELAY_SECONDS
    cap: float = MAX_DELAY_SECONDS
    healthy_run: float = HEALTHY_RUN_SECONDS
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        self._next = self.initial

    def delay(self, uptime: float) -> float:
        """The wait before restarting a child that ran `uptime` seconds before it exited."""
        if uptime >= self.healthy_run:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay


@dataclass(frozen=True)
class Exit:
    """How a child ended: its exit status when it was a process of ours, else why it was lost."""

    status: int | None
    reason: str


class Child(Protocol):
    name: str

    async def start(self) -> None:
        """Starts (or restarts) the child; returns once it is launched."""

    async def wait(self) -> Exit:
        """Returns when the child has exited or is lost."""

    async def stop(self) -> None:
        """Stops the child gracefully (forcibly past a grace period); a no-op when it is not running."""


class Supervised:
    """One child, restarted with back-off whenever it ends, until `stop()`."""

    def __init__(
        self,
        child: Child,
        backoff: Backoff | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.child = child
        self.restarts = 0
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep
        self._stopping = asyncio.Event()
        # Held while the child starts, so that `stop()` never races a start.
        self._starting = asyncio.Lock()
        self._started_at = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """The first start; then the child is watched and restarted in the background."""
        async with self._starting:
            await self.child.start()
            self._started_at = self._clock()
        self._task = asyncio.create_task(self.run(), name=f"supervise {self.child.name}")

    async def run(self) -> None:
        while True:
            ended = await self.child.wait()
            if self._stopping.is_set():
                return
            uptime = self._clock() - self._started_at
            delay = self._backoff.delay(uptime)
            self.restarts += 1
            log.warning(
                "restarting",
                extra={
                    "child": self.child.name,
                    "exit_status": ended.status,
                    "reason": ended.reason,
                    "uptime_seconds": round(uptime, 1),
                    "restart_in_seconds": delay,
                    "restarts": self.restarts,
                },
            )
            if await self._stopped_within(delay):
                return
            async with self._starting:
                if self._stopping.is_set():
                    return
                try:
                    await self.child.start()
                except Exception:
                    # The next wait() sees it is not running, and the back-off applies again.
                    log.exception("restart failed", extra={"child": self.child.name})
                    continue
                finally:
                    self._started_at = self._clock()
            log.info("restarted", extra={"child": self.child.name, "restarts": self.restarts})

    async def stop(self) -> None:
        """Stops restarting, then stops the child."""
        self._stopping.set()
        async with self._starting:
            await self.child.stop()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                # Supervision had failed; the child is stopped all the same.
                log.exception("supervision failed", extra={"child": self.child.name})

    async def _stopped_within(self, delay: float) -> bool:
        sleeping = asyncio.ensure_future(self._sleep(delay))
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({sleeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sleeping, stopping):
            task.cancel()
        return self._stopping.is_set()


class ServiceProcess:
    """A child process of the stack, in its own process group, so that a Ctrl-C in the
    terminal reaches the stack alone and the stack stops its children in order."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self._argv = list(argv)
        self._env = dict(env)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(*self._argv, env=self._env, process_group=0)

    async def wait(self) -> Exit:
        assert self._process is not None
        status = await self._process.wait()
        return Exit(status, describe(status))

    async def stop(self) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._process.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            log.warning("did not stop in time; killing it", extra={"child": self.name})
            self._process.kill()
            await self._process.wait()


def describe(status: int) -> str:
    """A process's exit status in words: a negative status is the signal that ended it."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"
