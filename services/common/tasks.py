"""Owning asyncio tasks: a `Spawn` hands long-lived work to its owner (the server), and
`cancel_and_wait` / `cancel_soon` are the one way an owner ends its tasks, as
procrastinate's `cancel_and_capture_errors` does: cancel all, and log what failed, with the
task's name, rather than leave an exception unretrieved."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)

# Runs `coroutine` as a task named `name`, owned (and cancelled at shutdown) by whoever gave it.
Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancels `tasks` and waits until every one has ended."""
    ending = list(tasks)
    for task in ending:
        task.cancel()
    if ending:
        await asyncio.wait(ending)
    for task in ending:
        log_failure(task)


def cancel_soon(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancels `tasks` without waiting, for owners that end in synchronous code (a stream's
    `finally`); each one's failure is still logged once it has ended."""
    for task in tasks:
        task.add_done_callback(log_failure)
        task.cancel()


def log_failure(task: asyncio.Task[Any]) -> None:
    """Logs the exception an ended task raised, if any (which also marks it retrieved)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("task failed", extra={"task": task.get_name()}, exc_info=task.exception())
