"""What the terminal shows, as plain data: a my-watchlist stream's messages applied to the
last tick per instrument, the watchlist's items, stale instruments and messages for the user.
No widgets and no gRPC calls here, so a recorded stream can be replayed into it in a test.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2
from dataserver.subscription.v1 import subscription_pb2 as spb

from services.common.keys import proto_wire_key

MESSAGES_KEPT = 50
RATE_WINDOW_SECONDS = 2.0
NONE = "—"


@dataclass(frozen=True)
class WatchRow:
    """One watchlist item, priced from its underlying's last tick."""

    item_id: str
    symbol: str
    ltp: float | None
    change: float | None
    change_percent: float | None
    bid: float | None
    ask: float | None
    volume: int | None
    open_interest: int | None
    stale: bool
    evicted: bool


def change_of(tick: feed_pb2.Tick | None) -> tuple[float | None, float | None]:
    """Change and % change from the previous close; none without a close to compare with."""
    if tick is None or not tick.last_price or not tick.previous_close:
        return None, None
    change = tick.last_price - tick.previous_close
    return change, 100.0 * change / tick.previous_close


def best_bid_ask(tick: feed_pb2.Tick | None) -> tuple[float | None, float | None]:
    if tick is None or not tick.depth:
        return None, None
    top = tick.depth[0]
    return (top.bid_price or None), (top.ask_price or None)


@dataclass
class TerminalModel:
    """The state of one my-watchlist stream; `apply` takes each StreamTicksResponse."""

    now: Callable[[], float] = time.monotonic
    connection: str = "connecting"
    following: str = ""
    ticks: dict[int, feed_pb2.Tick] = field(default_factory=dict)
    items: dict[str, spb.WatchlistItem] = field(default_factory=dict)
    stale: dict[int, str] = field(default_factory=dict)  # wire key -> why
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=MESSAGES_KEPT))
    ticks_applied: int = 0  # since the start, for a benchmark's keep-up ratio against the gateway's count
    _updates: deque[tuple[float, int]] = field(default_factory=deque)

    def set_items(self, items: Iterable[spb.WatchlistItem]) -> None:
        self.items = {item.item_id: item for item in items}

    def say(self, message: str) -> None:
        self.messages.append(message)

    def apply(self, response: feed_pb2.StreamTicksResponse) -> None:
        body = response.WhichOneof("body")
        if body == "snapshot":
            self.connection = "live"
            self._ticks(response.snapshot.ticks)
            for state in response.snapshot.instruments:
                self._state(state)
        elif body == "batch":
            self._ticks(response.batch.ticks)
        elif body == "event":
            self._event(response.event)

    def _ticks(self, ticks: Iterable[feed_pb2.Tick]) -> None:
        count = 0
        for tick in ticks:
            key = proto_wire_key(tick.key)
            self.ticks[key] = tick
            self.stale.pop(key, None)
            count += 1
        if count:
            self.ticks_applied += count
            self._updates.append((self.now(), count))

    def _state(self, state: feed_pb2.InstrumentState) -> None:
        key = proto_wire_key(state.key)
        if state.stale:
            self.stale[key] = state.stale_reason or "stale"
        else:
            self.stale.pop(key, None)

    def _event(self, event: feed_pb2.StreamEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "watchlist":
            self._watchlist(event.watchlist)
        elif kind == "upstream":
            self._upstream(event.upstream)
        elif kind == "instrument_status":
            self._state(event.instrument_status)
        elif kind == "watchlist_following":
            paused = event.watchlist_following.state == feed_pb2.WATCHLIST_FOLLOWING_STATE_PAUSED
            self.following = "paused" if paused else ""
            self.say(f"watchlist {'paused' if paused else 'resumed'}: {event.watchlist_following.reason}")
        elif kind == "draining":
            self.say(f"server draining: {event.draining.reason}")
        elif kind == "slow_consumer":
            self.say(f"slow consumer: {event.slow_consumer.conflated_updates} updates conflated")

    def _watchlist(self, event: spb.WatchlistEvent) -> None:
        item = event.watchlist_item
        if event.kind == spb.WATCHLIST_EVENT_KIND_REMOVED:
            self.items.pop(item.item_id, None)
            self.say(f"removed {item.symbol}")
            return
        self.items[item.item_id] = item
        if event.kind == spb.WATCHLIST_EVENT_KIND_EVICTED:
            self.say(f"EVICTED {item.symbol}: {item.eviction_message or spb.EvictionReason.Name(item.eviction_reason)}")
        elif event.kind == spb.WATCHLIST_EVENT_KIND_ADDED:
            self.say(f"added {item.symbol}")
        elif event.kind == spb.WATCHLIST_EVENT_KIND_RECENTERED:
            self.say(f"{item.symbol} re-centred at {item.atm_strike:g}")

    def _upstream(self, change: feed_pb2.UpstreamStatusChange) -> None:
        keys = [proto_wire_key(k) for k in change.instruments]
        cause = feed_pb2.UpstreamCause.Name(change.cause).removeprefix("UPSTREAM_CAUSE_").lower()
        if change.state == feed_pb2.UPSTREAM_STATE_INTERRUPTED:
            for key in keys:
                self.stale[key] = change.reason or cause
            self.say(f"STALE: {change.affected_instruments} instrument(s), {cause}: {change.reason}")
        else:
            for key in keys:
                self.stale.pop(key, None)
            self.say(f"LIVE again: {change.affected_instruments} instrument(s)")

    def updates_per_second(self) -> float:
        cutoff = self.now() - RATE_WINDOW_SECONDS
        while self._updates and self._updates[0][0] < cutoff:
            self._updates.popleft()
        return sum(n for _, n in self._updates) / RATE_WINDOW_SECONDS

    def tick(self, key: common_pb2.InstrumentKey) -> feed_pb2.Tick | None:
        return self.ticks.get(proto_wire_key(key))

    def is_stale(self, key: common_pb2.InstrumentKey) -> bool:
        return proto_wire_key(key) in self.stale

    def rows(self) -> list[WatchRow]:
        rows = []
        for item in sorted(self.items.values(), key=lambda i: i.symbol):
            tick = self.tick(item.underlying)
            change, percent = change_of(tick)
            bid, ask = best_bid_ask(tick)
            rows.append(
                WatchRow(
                    item_id=item.item_id,
                    symbol=item.symbol,
                    ltp=tick.last_price if tick else None,
                    change=change,
                    change_percent=percent,
                    bid=bid,
                    ask=ask,
                    volume=tick.volume if tick else None,
                    open_interest=tick.open_interest if tick and tick.open_interest else None,
                    stale=self.is_stale(item.underlying),
                    evicted=item.state == spb.WATCHLIST_ITEM_STATE_EVICTED,
                )
            )
        return rows


def price(value: float | None) -> str:
    return NONE if value is None else f"{value:,.2f}"


def signed(value: float | None, suffix: str = "") -> str:
    return NONE if value is None else f"{value:+,.2f}{suffix}"


def count(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"
