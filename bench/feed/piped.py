"""Python children of the feed bench driven by commands on a pipe (the terminal processes,
the reference fan-out): started with multiprocessing (spawn), each answers "ready" once it
serves, then one answer per command; every wait is bounded, and a child's crash arrives as
its traceback (bench.children.run_spawned)."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench.children import stop_spawned

READY_SECONDS = 60.0
ANSWER_SECONDS = 30.0


class Piped:
    """A group of spawned children, asked together or one at a time."""

    def __init__(self) -> None:
        self.processes: list[BaseProcess] = []
        self.pipes: list[Connection] = []

    def start(self, target: Callable[..., None], name: str, log_path: Path, spec: dict[str, Any]) -> None:
        """Starts `target(conn, log_path, spec)` in a spawned child."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=target, args=(child, str(log_path), spec), name=name, daemon=True)
        process.start()
        child.close()
        self.processes.append(process)
        self.pipes.append(parent)

    def wait_ready(self, timeout: float = READY_SECONDS) -> list[dict[str, Any]]:
        """The "ready" answer of every child; stops them all if one fails or is late."""
        try:
            return [self._answer(n, "ready", timeout) for n in range(len(self.pipes))]
        except BaseException:
            self.stop()
            raise

    def ask(
        self, command: str, arg: Any = None, timeout: float = ANSWER_SECONDS, only: int | None = None
    ) -> list[dict[str, Any]]:
        targets = range(len(self.pipes)) if only is None else [only]
        for n in targets:
            self.pipes[n].send((command, arg))
        return [self._answer(n, command, timeout) for n in targets]

    def _answer(self, n: int, command: str, timeout: float) -> dict[str, Any]:
        name = self.processes[n].name
        if not self.pipes[n].poll(timeout):
            raise TimeoutError(f"{name} did not answer {command!r} within {timeout:.0f} s")
        answer: dict[str, Any] = self.pipes[n].recv()
        if answer.get("event") == "error":
            raise RuntimeError(f"{name} failed:\n{answer['traceback']}")
        return answer

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
        for process in self.processes:
            stop_spawned(process)
        for pipe in self.pipes:
            pipe.close()
        self.pipes.clear()
