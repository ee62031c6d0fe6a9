"""The gateway's terminal streams: the set of them, the batching clock that releases them,
the periodic check that sends heartbeats, counts the conflation of streams that stopped
reading while they are stalled (not only when they read again), and ends them, and the drain
that ends them all when the gateway stops."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from dataserver.feed.v1 import feed_pb2
from google.protobuf.duration_pb2 import Duration
from prometheus_client import Gauge

from services.common.errors import Unavailable
from services.common.tasks import Spawn
from services.feed.gateway.hub import Hub
from services.feed.gateway.streams import (
    CLOCK_SECONDS,
    MAX_BATCH_TICKS,
    SLOW_WARNING_SECONDS,
    Dispatcher,
    Shape,
    TerminalStream,
)

PENDING = Gauge("feed_gateway_pending_instruments", "Instruments with a value waiting to be sent, over all streams.")
PENDING_MAX = Gauge(
    "feed_gateway_stream_pending_instruments_max", "The most instruments pending on one stream (bounded by its size)."
)
# A stuck stream: its oldest pending tick ages until the stream is cut (streams.SLOW_CLOSE_SECONDS).
LAG_MAX = Gauge("feed_gateway_stream_lag_seconds_max", "The age of the oldest tick pending on any stream.")
SLOW = Gauge("feed_gateway_slow_streams", "Streams behind by more than the slow-consumer warning's lag.")

CHECK_SECONDS = 1.0
DRAINING = "gateway draining; reconnect"
# The end of a drain: time for the streams told to end to send their status (a stream blocked
# in a write cannot, and is cut by the server's stop).
CLOSE_SECONDS = 1.0

log = logging.getLogger(__name__)


class Terminals:
    def __init__(self, hub: Hub, batch_seconds: float = CLOCK_SECONDS) -> None:
        self.hub = hub
        self.streams: set[TerminalStream] = set()
        self.dispatcher = Dispatcher(batch_seconds)
        self.draining = False
        self._drained = asyncio.Event()  # set when the last stream of a drain has ended

    def start(self, spawn: Spawn) -> None:
        spawn(self.dispatcher.run(), "gateway-dispatcher")
        spawn(self._check(), "gateway-stream-checks")

    @contextmanager
    def open(
        self, mode: int, shape: Shape, *, max_batch: int = MAX_BATCH_TICKS, delay: float = 0.0
    ) -> Iterator[TerminalStream]:
        """A stream for the calling RPC, checked while the RPC lasts and closed when it ends."""
        if self.draining:
            raise Unavailable(DRAINING)
        stream = TerminalStream(self.hub, self.dispatcher, mode, shape, max_batch=max_batch, delay=delay)
        self.streams.add(stream)
        try:
            yield stream
        finally:
            self.streams.discard(stream)
            stream.close()
            if self.draining and not self.streams:
                self._drained.set()

    async def drain(self, seconds: float, reason: str = "gateway shutting down") -> None:
        """Tells every open stream the gateway is going away and keeps it ticking for `seconds`,
        so its terminal can reconnect to another replica first; then ends those still open with
        UNAVAILABLE (the server's stop cuts any blocked in a write). New streams are refused."""
        self.draining = True
        if not self.streams:
            return
        log.info("draining terminal streams", extra={"streams": len(self.streams), "seconds": seconds})
        deadline = Duration()
        deadline.FromNanoseconds(int(seconds * 1e9))
        for stream in list(self.streams):
            stream.send_event(feed_pb2.StreamEvent(draining=feed_pb2.ServerDraining(reason=reason, deadline=deadline)))
        if await self._all_ended(max(0.0, seconds - CLOSE_SECONDS)):
            return
        for stream in list(self.streams):
            stream.close_with(DRAINING, grpc.StatusCode.UNAVAILABLE)
        if not await self._all_ended(min(seconds, CLOSE_SECONDS)):
            log.warning("streams still open after the drain", extra={"streams": len(self.streams)})

    async def _all_ended(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._drained.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _check(self) -> None:
        """Heartbeats, slow-consumer checks and stalled streams' conflation, once a second."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            now = time.monotonic()
            for stream in list(self.streams):
                stream.check(now)
            PENDING.set(sum(len(s.pending) for s in self.streams))
            PENDING_MAX.set(max((len(s.pending) for s in self.streams), default=0))
            lags = [now - s.pending_since for s in self.streams if s.pending]
            LAG_MAX.set(max(lags, default=0.0))
            SLOW.set(sum(1 for lag in lags if lag > SLOW_WARNING_SECONDS))
            self.hub.publish_stale()
