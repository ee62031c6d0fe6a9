"""Keeps a "my watchlist" stream in step with the user's watchlist: the instruments of its
active units, their changes as they happen (adds, removals, evictions, re-centring), shown
to the terminal as events, and the user's units touched for LRU while they stream.

Ticks need neither the subscription service nor Postgres, so losing them only pauses the
following: the stream keeps ticking on its instruments, the terminal is told (PAUSED), and
the follower retries with capped back-off; once back, it re-lists the watchlist, applies what
changed meanwhile (as watchlist events, the new instruments' last values in the next batch),
and says RESUMED.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from dataserver.feed.v1 import feed_pb2
from dataserver.subscription.v1 import subscription_pb2 as spb
from dataserver.subscription.v1 import subscription_pb2_grpc

from services.common.clients import ServiceCaller
from services.common.errors import ServiceError, Unavailable, error_with
from services.common.keys import proto_wire_key, wire_key_proto
from services.feed.gateway.streams import TerminalStream

log = logging.getLogger(__name__)

TOUCH_SECONDS = 60.0
# Reconnecting to the subscription service: the first retry, doubled up to the cap.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0
# The event stream sends a heartbeat every 10 s; silence this long means it is gone.
SILENT_SECONDS = 30.0
# The subscription channel's own reconnection back-off, capped alike: gRPC's default cap (two
# minutes) would keep a stream paused long after the service came back.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", int(RETRY_FIRST_SECONDS * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(RETRY_MAX_SECONDS * 1000)),
)

EventCall = grpc.aio.UnaryStreamCall[spb.WatchWatchlistEventsRequest, spb.WatchWatchlistEventsResponse]
Units = dict[str, set[int]]  # active item id -> its instruments
# The subscription service's refusals that say something about the request, not its health.
_REFUSALS = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
)
_PAUSED = feed_pb2.WATCHLIST_FOLLOWING_STATE_PAUSED
_RESUMED = feed_pb2.WATCHLIST_FOLLOWING_STATE_RESUMED


class Lost(Exception):
    """The event stream ended or fell silent."""


def _why(error: Exception) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    if isinstance(error, ServiceError):
        return error.message
    return str(error)


class WatchlistFollower:
    def __init__(
        self, stub: subscription_pb2_grpc.SubscriptionServiceStub, caller: ServiceCaller, user_id: str
    ) -> None:
        self._stub = stub
        self._caller = caller
        self._user_id = user_id
        self._events: EventCall | None = None
        self.unit_keys: Units = {}
        self._listed: dict[str, spb.WatchlistItem] = {}  # the last listing's items, for a catch-up's events

    @property
    def item_ids(self) -> list[str]:
        return sorted(self.unit_keys)

    def keys(self) -> set[int]:
        return _keys(self.unit_keys)

    async def initial_keys(self) -> list[int]:
        """The watchlist's instruments; without the subscription service the stream cannot know
        them, so it is refused with UNAVAILABLE (the terminal retries)."""
        try:
            self._events, self.unit_keys, _ = await self._open()
        except grpc.aio.AioRpcError as error:
            if error.code() in _REFUSALS:
                raise error_with(error.code(), error.details() or "the subscription service refused") from error
            raise self._unavailable(_why(error)) from error
        except Unavailable as error:
            raise self._unavailable(error.message) from error
        return sorted(self.keys())

    @staticmethod
    def _unavailable(why: str) -> ServiceError:
        return Unavailable(
            f"a my_watchlist stream starts from your watchlist, and the subscription service that keeps it "
            f"is unavailable ({why}); retry in a few seconds"
        )

    async def _open(self) -> tuple[EventCall, Units, spb.WatchlistSnapshot]:
        """Opens the event stream first, so nothing between the listing and it is missed; the
        listing gives the active items' instruments, the stream's snapshot every item's state."""
        events = self._stub.WatchWatchlistEvents(
            spb.WatchWatchlistEventsRequest(user_id=self._user_id), metadata=self._caller.metadata()
        )
        try:
            first = await asyncio.wait_for(events.read(), SILENT_SECONDS)
            if not isinstance(first, spb.WatchWatchlistEventsResponse):  # EOF
                raise Unavailable("the watchlist event stream ended at once")
            return events, await self._list(), first.snapshot
        except BaseException:
            events.cancel()
            raise

    async def _list(self) -> Units:
        units: Units = {}
        self._listed = {}
        token = ""
        while True:
            page = await self._caller.call(
                self._stub.ListWatchlistItems,
                spb.ListWatchlistItemsRequest(
                    user_id=self._user_id,
                    state=spb.WATCHLIST_ITEM_STATE_ACTIVE,
                    include_instruments=True,
                    page_size=500,
                    page_token=token,
                ),
            )
            for item in page.watchlist_items:
                units[item.item_id] = {proto_wire_key(k) for k in item.instruments}
                self._listed[item.item_id] = item
            token = page.next_page_token
            if not token:
                return units

    def follow(self, stream: TerminalStream) -> None:
        """Follows the events and touches the units for as long as `stream` lasts."""
        events = self._events
        assert events is not None
        self._events = None
        stream.spawn(self._follow(stream, events), f"watchlist-{self._user_id}")
        stream.spawn(self._touch(), f"watchlist-touch-{self._user_id}")

    async def _follow(self, stream: TerminalStream, events: EventCall) -> None:
        """Applies events until the stream closes; each loss pauses the following until the
        service is back and the stream caught up. The event call ends with this task."""
        while True:
            try:
                await self._apply_events(stream, events)
            except (grpc.aio.AioRpcError, ServiceError, Lost, TimeoutError) as error:
                why = _why(error) or type(error).__name__
            finally:
                events.cancel()
            log.warning("watchlist events lost; following paused", extra={"user": self._user_id, "error": why})
            stream.send_event(_following(_PAUSED, f"subscription service unavailable ({why}); ticks continue"))
            events, changed = await self._reconnect(stream)
            log.info("watchlist following resumed", extra={"user": self._user_id, "changed_items": changed})
            stream.send_event(
                _following(_RESUMED, f"subscription service back; caught up on {changed} changed watchlist item(s)")
            )

    async def _apply_events(self, stream: TerminalStream, events: EventCall) -> None:
        while True:
            # read(), not `async for`: the call was already read from, and gRPC does not
            # allow mixing the two.
            message = await asyncio.wait_for(events.read(), SILENT_SECONDS)
            if not isinstance(message, spb.WatchWatchlistEventsResponse):
                raise Lost("the watchlist event stream ended")
            if message.HasField("event"):
                self._apply(stream, message.event)
            elif message.HasField("snapshot"):  # the service may have missed events: catch up
                self._catch_up(stream, await self._list(), message.snapshot)

    def _apply(self, stream: TerminalStream, event: spb.WatchlistEvent) -> None:
        item_id = event.watchlist_item.item_id
        before = self.keys()
        if event.kind in (spb.WATCHLIST_EVENT_KIND_ADDED, spb.WATCHLIST_EVENT_KIND_RECENTERED):
            unit = self.unit_keys.setdefault(item_id, set())
            unit.update(proto_wire_key(k) for k in event.instruments_added)
            unit.difference_update(proto_wire_key(k) for k in event.instruments_removed)
        else:
            self.unit_keys.pop(item_id, None)
        self._show(stream, before, [event])

    def _show(self, stream: TerminalStream, before: set[int], events: list[spb.WatchlistEvent]) -> None:
        """Moves the stream to the watchlist's instruments and tells the terminal why. An
        instrument another active unit of the user still holds keeps streaming."""
        after = self.keys()
        added = sorted(after - before)
        stream.add(added)
        stream.remove(sorted(before - after))
        for event in events:
            stream.send_event(feed_pb2.StreamEvent(watchlist=event))
        instruments = stream.hub.instruments
        for key in added:  # their last values go out with the next batch, not only their next ticks
            latest = instruments[key].latest if key in instruments else None
            if latest is not None:
                stream.mark(key, latest.sequence)

    async def _reconnect(self, stream: TerminalStream) -> tuple[EventCall, int]:
        """Retries with capped back-off until the event stream is open and the watchlist listed,
        then applies what changed meanwhile; returns the call and how many items changed."""
        delay = RETRY_FIRST_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                events, units, snapshot = await self._open()
            except (grpc.aio.AioRpcError, ServiceError, TimeoutError) as error:
                log.debug("subscription service still unavailable", extra={"error": _why(error)})
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            return events, self._catch_up(stream, units, snapshot)

    def _catch_up(self, stream: TerminalStream, units: Units, snapshot: spb.WatchlistSnapshot) -> int:
        """Moves the stream to a fresh listing's `units`, with the events the terminal missed;
        returns how many items changed."""
        changes = _changes(self.unit_keys, units, self._listed, snapshot, self._user_id)
        before = self.keys()
        self.unit_keys = units
        self._show(stream, before, changes)
        return len(changes)

    async def _touch(self) -> None:
        while True:
            if self.unit_keys:
                try:
                    await self._caller.call(
                        self._stub.RecordUsage, spb.RecordUsageRequest(user_id=self._user_id, item_ids=self.item_ids)
                    )
                except Exception as error:  # touching is best effort
                    log.debug("RecordUsage failed", extra={"error": str(error)})
            await asyncio.sleep(TOUCH_SECONDS)


def _keys(units: Units) -> set[int]:
    return set().union(*units.values()) if units else set()


def _following(state: feed_pb2.WatchlistFollowingState, reason: str) -> feed_pb2.StreamEvent:
    return feed_pb2.StreamEvent(watchlist_following=feed_pb2.WatchlistFollowing(state=state, reason=reason))


def _changes(
    old: Units, new: Units, items: dict[str, spb.WatchlistItem], snapshot: spb.WatchlistSnapshot, user_id: str
) -> list[spb.WatchlistEvent]:
    """The events a terminal missed, rebuilt from the units before and after: an item gone from
    the active ones was evicted (when the snapshot still has it) or removed."""
    states = {item.item_id: item for item in snapshot.watchlist_items}
    events = []
    for item_id in sorted(old.keys() - new.keys()):
        kept = states.get(item_id)
        events.append(
            spb.WatchlistEvent(
                kind=spb.WATCHLIST_EVENT_KIND_EVICTED if kept is not None else spb.WATCHLIST_EVENT_KIND_REMOVED,
                watchlist_item=kept if kept is not None else spb.WatchlistItem(item_id=item_id, user_id=user_id),
                instruments_removed=[wire_key_proto(k) for k in sorted(old[item_id])],
            )
        )
    for item_id in sorted(new.keys()):
        gained, lost = new[item_id] - old.get(item_id, set()), old.get(item_id, set()) - new[item_id]
        if item_id in old and not gained and not lost:
            continue
        events.append(
            spb.WatchlistEvent(
                kind=spb.WATCHLIST_EVENT_KIND_RECENTERED if item_id in old else spb.WATCHLIST_EVENT_KIND_ADDED,
                watchlist_item=items.get(item_id, spb.WatchlistItem(item_id=item_id, user_id=user_id)),
                instruments_added=[wire_key_proto(k) for k in sorted(gained)],
                instruments_removed=[wire_key_proto(k) for k in sorted(lost)],
            )
        )
    for event in events:
        event.occurred_at.GetCurrentTime()
    return events
