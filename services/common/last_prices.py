"""Last traded prices from the feed gateway's snapshot, for ATM decisions.

A missing, unreachable or not-yet-built gateway means "no live price": callers fall back to
the caller's price or the previous close, so nothing waits on the feed.
"""

from __future__ import annotations

import logging
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


class NoLastPrices:
    async def last_price(self, segment: str, security_id: int) -> float | None:
        return None


class GatewayLastPrices:
    def __init__(self, address: str, token: str | None) -> None:
        self._channel = open_channel(address)
        self._stub = feed_pb2_grpc.GatewayServiceStub(self._channel)
        self._caller = ServiceCaller("feed gateway", token, timeout=1.0)

    async def last_price(self, segment: str, security_id: int) -> float | None:
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
                return float(tick.last_price)
        return None

    async def close(self) -> None:
        await self._channel.close()
