"""The gateway's terminal streams: the set of them, the batching clock that releases them,
and the periodic check that sends heartbeats, counts the conflation of streams that stopped
reading while they are stalled (not only when they read again), and ends them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

from services.common.tasks import Spawn
from services.feed.gateway.hub import Hub
from services.feed.gateway.streams import CLOCK_SECONDS, MAX_BATCH_TICKS, Dispatcher, Shape, TerminalStream

PENDING = Gauge("feed_gateway_pending_instruments", "Instruments with a value waiting to be sent, over all streams.")
PENDING_MAX = Gauge(
    "feed_gateway_stream_pending_max", "The most instruments pending on one stream (bounded by its size)."
)

CHECK_SECONDS = 1.0


class Terminals:
    def __init__(self, hub: Hub, batch_seconds: float = CLOCK_SECONDS) -> None:
        self.hub = hub
        self.streams: set[TerminalStream] = set()
        self.dispatcher = Dispatcher(batch_seconds)

    def start(self, spawn: Spawn) -> None:
        spawn(self.dispatcher.run(), "gateway-dispatcher")
        spawn(self._check(), "gateway-stream-checks")

    @contextmanager
    def open(
        self, mode: int, shape: Shape, *, max_batch: int = MAX_BATCH_TICKS, delay: float = 0.0
    ) -> Iterator[TerminalStream]:
        """A stream for the calling RPC, checked while the RPC lasts and closed when it ends."""
        stream = TerminalStream(self.hub, self.dispatcher, mode, shape, max_batch=max_batch, delay=delay)
        self.streams.add(stream)
        try:
            yield stream
        finally:
            self.streams.discard(stream)
            stream.close()

    async def _check(self) -> None:
        """Heartbeats, slow-consumer checks and stalled streams' conflation, once a second."""
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            now = time.monotonic()
            for stream in list(self.streams):
                stream.check(now)
            PENDING.set(sum(len(s.pending) for s in self.streams))
            PENDING_MAX.set(max((len(s.pending) for s in self.streams), default=0))
