"""LISTEN/NOTIFY on one dedicated connection per replica, fanned out to waiting streams.

Only ever a hint to look now: every stream also polls, so a lost notification (or a lost
connection) costs at most a poll interval, never a missed change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from services.common.tasks import Spawn

log = logging.getLogger(__name__)

CHANNELS = ("assignment_changes", "watchlist_events")


class ChangeNotifier:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._waiters: dict[str, set[asyncio.Event]] = {channel: set() for channel in CHANNELS}

    def start(self, spawn: Spawn) -> None:
        spawn(self._listen(), "change-notifier")

    def subscribe(self, channel: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[channel].add(event)
        return event

    def unsubscribe(self, channel: str, event: asyncio.Event) -> None:
        self._waiters[channel].discard(event)

    def _wake(self, channel: str) -> None:
        for event in self._waiters.get(channel, ()):
            event.set()

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                    delay = 0.5
                    for channel in CHANNELS:  # anything missed while (re)connecting
                        self._wake(channel)
                    async for notify in conn.notifies():
                        self._wake(notify.channel)
            except asyncio.CancelledError:
                raise
            except psycopg.Error as error:
                log.warning("notification connection lost; streams keep polling", extra={"error": str(error)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


async def wait_for(event: asyncio.Event, timeout: float) -> None:
    """Waits for a wake-up or the poll interval, whichever comes first, then re-arms."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    event.clear()
