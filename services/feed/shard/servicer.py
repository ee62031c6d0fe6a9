"""ShardService: the internal stream a shard gives the gateway, and its status."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from dataserver.feed.v1 import shard_pb2, shard_pb2_grpc

from services.common.errors import Aborted, InvalidArgument
from services.feed.shard.runtime import Overflow, ShardRuntime

STATUS_SECONDS = 2.0


class ShardServicer(shard_pb2_grpc.ShardServiceServicer):
    def __init__(self, runtime: ShardRuntime) -> None:
        self._runtime = runtime

    async def StreamShardTicks(
        self, request: shard_pb2.StreamShardTicksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[shard_pb2.StreamShardTicksResponse]:
        if not request.gateway_id:
            raise InvalidArgument("gateway_id is required (any id naming the caller, for logs)")
        await self._runtime.assigned.wait()  # its first snapshot lists the shard's own instruments
        stream, opening = self._runtime.attach()
        try:
            for first in opening:
                yield first
            loop = asyncio.get_running_loop()
            status_due = loop.time()
            while True:
                if loop.time() >= status_due:
                    # The status, every few seconds however busy the stream, doubles as a heartbeat.
                    yield shard_pb2.StreamShardTicksResponse(
                        shard_sequence=self._runtime.shard_sequence, status=self._runtime.status()
                    )
                    status_due = loop.time() + STATUS_SECONDS
                message = stream.take()
                if message is None:
                    # Only an idle stream pays for a timed wait; a busy one drains without a task per message.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stream.ready.wait(), max(0.0, status_due - loop.time()))
                    continue
                if message is Overflow:
                    raise Aborted("the gateway fell too far behind this shard; reconnect for a fresh snapshot")
                yield message
        finally:
            self._runtime.detach(stream)

    async def GetStatus(
        self, request: shard_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb2.GetStatusResponse:
        return shard_pb2.GetStatusResponse(status=self._runtime.status())
