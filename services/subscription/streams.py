"""The two streams: a shard's assignment (snapshot, then change sets) and users' watchlist
events (snapshot, then events). Level-triggered: each reads the database from its last
version, woken by notifications but polling regardless, and a reconnect always starts from a
fresh snapshot."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from dataserver.subscription.v1 import subscription_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg_pool import AsyncConnectionPool

from services.common.sqlfiles import load_queries
from services.subscription.convert import (
    EVENT_KINDS,
    MODE_TO_PROTO,
    key_proto,
    timestamp,
    watchlist_item,
)
from services.subscription.ledger import LOCK_KEY
from services.subscription.ledger import QUERIES as LEDGER_QUERIES
from services.subscription.notifier import ChangeNotifier, wait_for

REPORTS = load_queries("services.subscription", "reports.sql")
_BATCH = 20_000


def coalesce(rows: list[dict[str, Any]]) -> tuple[list[pb.Assignment], list[pb.Assignment], list[Any]]:
    """Folds a run of changes into their net effect per instrument, relative to what the shard
    held before the run: one add of 202 instruments becomes one change set."""
    first: dict[tuple[str, int], str] = {}
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["exchange_segment"], row["security_id"])
        first.setdefault(key, row["change"])
        last[key] = row
    added, updated, removed = [], [], []
    for key, row in last.items():
        held_before = first[key] != "add"
        if row["change"] == "remove":
            if held_before:
                removed.append(key_proto(key))
            continue
        assignment = pb.Assignment(key=key_proto(key), mode=MODE_TO_PROTO[row["feed_mode"]], version=row["version"])
        (updated if held_before else added).append(assignment)
    return added, updated, removed


class Streams:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        notifier: ChangeNotifier,
        *,
        shard_limit: int,
        poll_seconds: float = 1.0,
        heartbeat_seconds: float = 10.0,
        retention_seconds: float = 600.0,
    ) -> None:
        self._pool = pool
        self._notifier = notifier
        self._shard_limit = shard_limit
        self._poll = poll_seconds
        self._heartbeat = heartbeat_seconds
        self._retention = retention_seconds

    async def _shard_snapshot(self, shard_id: int) -> tuple[int, list[dict[str, Any]]]:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                # Shared lock: no writer is mid-transaction, so rows and version agree.
                await conn.execute(LEDGER_QUERIES["lock_subscriptions_shared"], {"lock_key": LOCK_KEY})
                cursor = await conn.execute(REPORTS["shard_snapshot"], {"shard_id": shard_id})
                rows = await cursor.fetchall()
                cursor = await conn.execute(REPORTS["last_change_version"])
                version = await cursor.fetchone()
        return int(version["version"]), rows  # type: ignore[index]

    async def _snapshot_message(self, shard_id: int) -> tuple[int, pb.WatchAssignmentsResponse]:
        version, rows = await self._shard_snapshot(shard_id)
        return version, pb.WatchAssignmentsResponse(
            kind=pb.ASSIGNMENT_MESSAGE_KIND_SNAPSHOT,
            version=version,
            shard_id=shard_id,
            shard_limit=self._shard_limit,
            assignments=[
                pb.Assignment(
                    key=key_proto((r["exchange_segment"], r["security_id"])),
                    mode=MODE_TO_PROTO[r["feed_mode"]],
                    version=version,
                )
                for r in rows
            ],
            sent_at=timestamp_now(),
        )

    async def assignments(self, shard_id: int) -> AsyncIterator[pb.WatchAssignmentsResponse]:
        wake = self._notifier.subscribe("assignment_changes")
        try:
            version, snapshot = await self._snapshot_message(shard_id)
            yield snapshot
            last_read = last_sent = time.monotonic()
            while True:
                if time.monotonic() - last_read > self._retention / 2:
                    # Too long between reads: the change log may have been pruned past us.
                    version, snapshot = await self._snapshot_message(shard_id)
                    yield snapshot
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(
                        REPORTS["shard_changes"], {"shard_id": shard_id, "after": version, "limit": _BATCH}
                    )
                    changes = await cursor.fetchall()
                last_read = time.monotonic()
                if changes:
                    version = changes[-1]["version"]
                    added, updated, removed = coalesce(changes)
                    if added or updated or removed:
                        yield pb.WatchAssignmentsResponse(
                            kind=pb.ASSIGNMENT_MESSAGE_KIND_CHANGES,
                            version=version,
                            shard_id=shard_id,
                            shard_limit=self._shard_limit,
                            added=added,
                            updated=updated,
                            removed=removed,
                            sent_at=timestamp_now(),
                        )
                        last_sent = time.monotonic()
                    if len(changes) == _BATCH:
                        continue
                elif time.monotonic() - last_sent >= self._heartbeat:
                    yield pb.WatchAssignmentsResponse(
                        kind=pb.ASSIGNMENT_MESSAGE_KIND_HEARTBEAT,
                        version=version,
                        shard_id=shard_id,
                        shard_limit=self._shard_limit,
                        sent_at=timestamp_now(),
                    )
                    last_sent = time.monotonic()
                await wait_for(wake, self._poll)
        finally:
            self._notifier.unsubscribe("assignment_changes", wake)

    async def watchlist_events(self, user_id: str | None) -> AsyncIterator[pb.WatchWatchlistEventsResponse]:
        wake = self._notifier.subscribe("watchlist_events")
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(REPORTS["last_event_id"])
                after = int((await cursor.fetchone())["event_id"])  # type: ignore[index]
                cursor = await conn.execute(LEDGER_QUERIES["items_of"], {"user_id": user_id, "state": None})
                items = await cursor.fetchall()
            yield pb.WatchWatchlistEventsResponse(
                snapshot=pb.WatchlistSnapshot(watchlist_items=[watchlist_item(i) for i in items])
            )
            last_sent = time.monotonic()
            while True:
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(
                        REPORTS["events_after"], {"after": after, "user_id": user_id, "limit": 1000}
                    )
                    events = await cursor.fetchall()
                    for event in events:
                        after = event["event_id"]
                        cursor = await conn.execute(LEDGER_QUERIES["get_item"], {"item_id": event["item_id"]})
                        item = await cursor.fetchone()
                        yield pb.WatchWatchlistEventsResponse(event=_event(event, item))
                        last_sent = time.monotonic()
                if not events and time.monotonic() - last_sent >= self._heartbeat:
                    yield pb.WatchWatchlistEventsResponse(heartbeat=timestamp_now())
                    last_sent = time.monotonic()
                if len(events) < 1000:
                    await wait_for(wake, self._poll)
        finally:
            self._notifier.unsubscribe("watchlist_events", wake)


def _event(event: dict[str, Any], item: dict[str, Any] | None) -> pb.WatchlistEvent:
    proto_item = (
        watchlist_item(item) if item else pb.WatchlistItem(item_id=str(event["item_id"]), user_id=event["user_id"])
    )
    return pb.WatchlistEvent(
        kind=EVENT_KINDS[event["kind"]],
        watchlist_item=proto_item,
        instruments_added=[key_proto((k[0], k[1])) for k in event["added"]],
        instruments_removed=[key_proto((k[0], k[1])) for k in event["removed"]],
        occurred_at=timestamp(event["created_at"]),
    )


def timestamp_now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
