"""The two streams: a shard's assignment (snapshot, then change sets) and users' watchlist
events (snapshot, then events). Level-triggered: each reads the database from its last
version, woken by notifications but polling regardless, and a reconnect always starts from a
fresh snapshot."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from dataserver.common.v1 import common_pb2
from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.db import Pool
from services.common.keys import Key, key_proto
from services.common.timestamps import timestamp, timestamp_now
from services.subscription.convert import EVENT_KINDS, MODE_TO_PROTO, watchlist_item
from services.subscription.notifier import ChangeNotifier, wait_for
from services.subscription.readmodel import ReadModel
from services.subscription.sql import Row

_BATCH = 20_000
_EVENT_BATCH = 1000


def coalesce(rows: list[Row]) -> tuple[list[pb.Assignment], list[pb.Assignment], list[common_pb2.InstrumentKey]]:
    """Folds a run of changes into their net effect per instrument, relative to what the shard
    held before the run: one add of 202 instruments becomes one change set."""
    first: dict[Key, str] = {}
    last: dict[Key, Row] = {}
    for row in rows:
        key = (row["exchange_segment"], row["security_id"])
        first.setdefault(key, row["change"])
        last[key] = row
    added: list[pb.Assignment] = []
    updated: list[pb.Assignment] = []
    removed: list[common_pb2.InstrumentKey] = []
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
        pool: Pool,
        notifier: ChangeNotifier,
        *,
        shard_limit: int,
        poll_seconds: float = 1.0,
        heartbeat_seconds: float = 10.0,
        retention_seconds: float = 600.0,
    ) -> None:
        self._reads = ReadModel(pool)
        self._notifier = notifier
        self._shard_limit = shard_limit
        self._poll = poll_seconds
        self._heartbeat = heartbeat_seconds
        self._retention = retention_seconds

    async def _snapshot_message(self, shard_id: int) -> tuple[int, pb.WatchAssignmentsResponse]:
        version, rows = await self._reads.shard_snapshot(shard_id)
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
                changes = await self._reads.shard_changes(shard_id, version, _BATCH)
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
            after, items = await self._reads.watchlist_snapshot(user_id)
            yield pb.WatchWatchlistEventsResponse(
                snapshot=pb.WatchlistSnapshot(watchlist_items=[watchlist_item(i) for i in items])
            )
            last_sent = time.monotonic()
            while True:
                events = await self._reads.events_after(after, user_id, _EVENT_BATCH)
                for event, item in events:
                    after = event["event_id"]
                    yield pb.WatchWatchlistEventsResponse(event=_event(event, item))
                    last_sent = time.monotonic()
                if not events and time.monotonic() - last_sent >= self._heartbeat:
                    yield pb.WatchWatchlistEventsResponse(heartbeat=timestamp_now())
                    last_sent = time.monotonic()
                if len(events) < _EVENT_BATCH:
                    await wait_for(wake, self._poll)
        finally:
            self._notifier.unsubscribe("watchlist_events", wake)


def _event(event: Row, item: Row | None) -> pb.WatchlistEvent:
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
