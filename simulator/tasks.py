"""The one place the simulator's background tasks are started and stopped: each is kept
referenced while it runs, a failure is logged with the task's name, and stopping cancels
them all and waits for them (`services.common.tasks`, as the services' servers do)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from services.common.tasks import cancel_and_wait, log_failure


class Tasks:
    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Runs ``coro`` in the background as the task ``name``."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        log_failure(task)

    async def stop(self) -> None:
        """Cancels every running task and waits until they have all ended."""
        running = list(self._running)
        self._running.clear()
        for task in running:
            task.remove_done_callback(self._done)  # ended on purpose: cancel_and_wait logs a failure
        await cancel_and_wait(running)
