"""Keeps a "my watchlist" stream in step with the user's watchlist: the instruments of its
active units, their changes as they happen (adds, removals, evictions, re-centring), shown
to the terminal as events, and the user's units touched for LRU while they stream."""

from __future__ import annotations

import asyncio
import logging

import grpc
from dataserver.feed.v1 import feed_pb2
from dataserver.subscription.v1 import subscription_pb2 as spb
from dataserver.subscription.v1 import subscription_pb2_grpc

from services.common.clients import ServiceCaller
from services.common.keys import proto_wire_key
from services.feed.gateway.streams import TerminalStream

log = logging.getLogger(__name__)

TOUCH_SECONDS = 60.0


def _keys(keys: object) -> list[int]:
    return [proto_wire_key(k) for k in keys]  # type: ignore[attr-defined]


class WatchlistFollower:
    def __init__(
        self, stub: subscription_pb2_grpc.SubscriptionServiceStub, caller: ServiceCaller, user_id: str
    ) -> None:
        self._stub = stub
        self._caller = caller
        self._user_id = user_id
        self._events: grpc.aio.UnaryStreamCall | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.unit_keys: dict[str, set[int]] = {}  # active item id -> its instruments

    @property
    def item_ids(self) -> list[str]:
        return sorted(self.unit_keys)

    def keys(self) -> set[int]:
        return set().union(*self.unit_keys.values()) if self.unit_keys else set()

    async def initial_keys(self) -> list[int]:
        """Opens the event stream first, so nothing between the listing and it is missed."""
        self._events = self._stub.WatchWatchlistEvents(
            spb.WatchWatchlistEventsRequest(user_id=self._user_id), metadata=self._caller.metadata()
        )
        await self._events.read()  # the snapshot; instruments come from the listing below
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
                self.unit_keys[item.item_id] = set(_keys(item.instruments))
            token = page.next_page_token
            if not token:
                return sorted(self.keys())

    def follow(self, stream: TerminalStream) -> None:
        self._tasks.append(asyncio.create_task(self._apply_events(stream), name=f"watchlist-{self._user_id}"))
        self._tasks.append(asyncio.create_task(self._touch(), name=f"watchlist-touch-{self._user_id}"))

    async def _apply_events(self, stream: TerminalStream) -> None:
        assert self._events is not None
        try:
            while True:
                # read(), not `async for`: the call was already read from, and gRPC does not
                # allow mixing the two.
                message = await self._events.read()
                if message is grpc.aio.EOF:
                    raise grpc.aio.AioRpcError(
                        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "stream ended"
                    )
                if not message.HasField("event"):
                    continue
                event = message.event
                item_id = event.watchlist_item.item_id
                before = self.keys()
                if event.kind in (spb.WATCHLIST_EVENT_KIND_ADDED, spb.WATCHLIST_EVENT_KIND_RECENTERED):
                    unit = self.unit_keys.setdefault(item_id, set())
                    unit.update(_keys(event.instruments_added))
                    unit.difference_update(_keys(event.instruments_removed))
                else:
                    self.unit_keys.pop(item_id, None)
                # An instrument another active unit of the user still holds keeps streaming.
                after = self.keys()
                stream.add(sorted(after - before))
                stream.remove(sorted(before - after))
                stream.send_event(feed_pb2.StreamEvent(watchlist=event))
        except grpc.aio.AioRpcError as error:
            log.warning("watchlist events lost", extra={"user": self._user_id, "code": error.code().name})
            stream.close_with("the watchlist service went away; reconnect")

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

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._events is not None:
            self._events.cancel()
