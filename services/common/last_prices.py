"""Last traded prices from the feed gateway's snapshot, for ATM decisions.

A missing, unreachable or not-yet-built gateway means "no live price": callers fall back to
the caller's price or the previous close, so nothing waits on the feed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import grpc
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc

from services.common.clients import ServiceCaller, open_channel
from services.common.errors import ServiceError
from services.common.keys import key_proto

log = logging.getLogger(__name__)


class LastPriceSource(Protocol):
    async def last_price(self, segment: str, security_id: int) -> float | None: ...


@dataclass(frozen=True)
class LastQuote:
    """A last price and when the feed received it (seconds since the Unix epoch; None when
    the source does not know, which its readers take as fresh)."""

    price: float
    received_at: float | None


async def last_quote(source: LastPriceSource, segment: str, security_id: int) -> LastQuote | None:
    """The source's last price with its receive time when the source gives one (the
    gateway's snapshot does), else its bare last price."""
    timed = getattr(source, "last_quote", None)
    if timed is not None:
        quote: LastQuote | None = await timed(segment, security_id)
        return quote
    price = await source.last_price(segment, security_id)
    return None if price is None else LastQuote(price, None)


class NoLastPrices:
    async def last_price(self, segment: str, security_id: int) -> float | None:
        return None


class GatewayLastPrices:
    def __init__(self, address: str, token: str | None) -> None:
        self._channel = open_channel(address)
        self._stub = feed_pb2_grpc.GatewayServiceStub(self._channel)
        self._caller = ServiceCaller("feed gateway", token, timeout=1.0)

    async def last_price(self, segment: str, security_id: int) -> float | None:
        quote = await self.last_quote(segment, security_id)
        return quote.price if quote is not None else None

    async def last_quote(self, segment: str, security_id: int) -> LastQuote | None:
        key = key_proto((segment, security_id))
        try:
            reply = await self._caller.call(
                self._stub.GetSnapshot, feed_pb2.GetSnapshotRequest(keys=[key], mode=common_pb2.FEED_MODE_TICKER)
            )
        except (ServiceError, grpc.aio.AioRpcError) as error:
            log.debug("no live price from the gateway", extra={"error": str(error)})
            return None
        for tick in reply.ticks:
            if tick.last_price > 0:
                received = tick.receive_time_micros / 1e6 if tick.receive_time_micros > 0 else None
                return LastQuote(float(tick.last_price), received)
        return None

    async def close(self) -> None:
        await self._channel.close()
