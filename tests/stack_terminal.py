"""A terminal on the stack's gateway: one StreamTicks stream read on a thread of its own,
every message kept with the time it arrived, so a test asks afterwards what it saw."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc

from services.common.keys import Key, key_from_proto, key_proto
from tests.stack_fixtures import until


@dataclass(frozen=True)
class Received:
    at: float  # monotonic
    message: feed_pb2.StreamTicksResponse


class Terminal:
    """A StreamTicks stream of `keys` (or of the caller's watchlist when `keys` is None)."""

    def __init__(self, gateway_port: int, keys: Iterable[Key] | None, *, timeout: float = 600) -> None:
        self.keys = list(keys) if keys is not None else []
        request = (
            feed_pb2.StreamTicksRequest(my_watchlist=True)
            if keys is None
            else feed_pb2.StreamTicksRequest(
                instruments=feed_pb2.InstrumentList(keys=[key_proto(k) for k in self.keys])
            )
        )
        self._channel = grpc.insecure_channel(f"127.0.0.1:{gateway_port}")
        self._call: Any = feed_pb2_grpc.GatewayServiceStub(self._channel).StreamTicks(request, timeout=timeout)
        self.received: list[Received] = []
        self.ended: grpc.RpcError | None = None
        self.ended_at = 0.0
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self._call:
                self.received.append(Received(time.monotonic(), message))
        except grpc.RpcError as error:
            self.ended = error
        finally:
            self.ended_at = time.monotonic()
            self.done.set()

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- what it saw -------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in what was received; `since` arguments count from one."""
        return len(self.received)

    def snapshot(self, timeout: float = 30) -> feed_pb2.TickSnapshot:
        until(lambda: self.received or self.done.is_set(), timeout, "the stream's first message")
        assert self.received, f"the stream ended before its snapshot: {self.ended}"
        first = self.received[0].message
        assert first.WhichOneof("body") == "snapshot", first
        return first.snapshot

    def events(self, kind: str, since: int = 0) -> list[tuple[int, Any]]:
        """(position, event body) of each StreamEvent of `kind` ("upstream", "draining", ...)."""
        found = []
        for index, received in enumerate(self.received[since:], start=since):
            message = received.message
            if message.WhichOneof("body") == "event" and message.event.WhichOneof("event") == kind:
                found.append((index, getattr(message.event, kind)))
        return found

    def wait_event(
        self, kind: str, matches: Callable[[Any], bool], timeout: float, what: str, since: int = 0
    ) -> tuple[int, Any]:
        return until(
            lambda: next(((i, e) for i, e in self.events(kind, since) if matches(e)), None),
            timeout,
            lambda: f"{what}; the stream's events: {self.describe_events(since)}",
        )

    def ticked(self, since: int = 0, priced: bool = True) -> set[Key]:
        """Instruments that got a tick (with a price, unless `priced` is false) after `since`."""
        keys: set[Key] = set()
        for received in self.received[since:]:
            message = received.message
            if message.WhichOneof("body") == "batch":
                keys.update(key_from_proto(t.key) for t in message.batch.ticks if t.last_price > 0 or not priced)
        return keys

    def wait_ticks(self, since: int, timeout: float, what: str) -> set[Key]:
        return until(lambda: self.ticked(since), timeout, lambda: f"{what}; events: {self.describe_events(since)}")

    def describe_events(self, since: int = 0) -> list[str]:
        return [
            f"#{i} {r.message.event.WhichOneof('event')}: {_short(r.message.event)}"
            for i, r in enumerate(self.received[since:], start=since)
            if r.message.WhichOneof("body") == "event" and r.message.event.WhichOneof("event") != "market_phase"
        ]


def _short(event: feed_pb2.StreamEvent) -> str:
    body = getattr(event, event.WhichOneof("event") or "")
    text = str(body).replace("\n", " ")
    return text if len(text) < 400 else text[:400] + "..."


def key_set(keys: Iterable[common_pb2.InstrumentKey]) -> set[Key]:
    return {key_from_proto(k) for k in keys}
