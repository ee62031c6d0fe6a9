"""GatewayService: terminal tick streams (server-streaming and interactive), the unary
snapshot, shard status and market state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as spb
from dataserver.subscription.v1 import subscription_pb2_grpc

from services.common.auth import current_principal, principal_var
from services.common.clients import ServiceCaller
from services.common.clock import Clock, WallClock
from services.common.errors import InvalidArgument, NotFound, ServiceError
from services.common.keys import checked_wire_key
from services.common.tasks import cancel_soon
from services.common.timestamps import timestamp
from services.feed.gateway.chain import (
    DEFAULT_RATE,
    RECENTRE_SECONDS,
    ChainRequest,
    ChainWatch,
    Window,
    chain_update,
    open_window,
    recentred,
)
from services.feed.gateway.hub import Hub
from services.feed.gateway.market import MarketWatch, requested_segments
from services.feed.gateway.streams import INTERACTIVE, MAX_BATCH_TICKS, MAX_DELAY_SECONDS, STREAM_TICKS, TerminalStream
from services.feed.gateway.terminals import Terminals
from services.feed.gateway.watchlist import TOUCH_SECONDS, WatchlistFollower

SERVICE_NAME = feed_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
MAX_INSTRUMENTS_PER_STREAM = 5000
MAX_SNAPSHOT_KEYS = 1000
_REGISTRY_LOOKUPS = 100  # unknown keys of one request asked about at the registry


def _mode(value: int) -> common_pb2.FeedMode:
    return cast(common_pb2.FeedMode, value or common_pb2.FEED_MODE_FULL)


def _batching(options: feed_pb2.BatchOptions) -> dict[str, Any]:
    size = options.max_batch_size
    if size < 0:
        raise InvalidArgument(f"batch_options.max_batch_size is {size}; accepted: 0 (the default) to 5000")
    delay = options.max_batch_delay.ToTimedelta().total_seconds()
    if delay < 0:
        raise InvalidArgument("batch_options.max_batch_delay is negative; accepted: 0 (the default) to 1 s")
    return {"max_batch": min(size, MAX_BATCH_TICKS) or MAX_BATCH_TICKS, "delay": min(delay, MAX_DELAY_SECONDS)}


def _key(proto: common_pb2.InstrumentKey) -> int:
    return checked_wire_key(proto, "every key")


def _result(command: feed_pb2.InteractiveStreamTicksRequest, **fields: Any) -> feed_pb2.CommandResult:
    return feed_pb2.CommandResult(correlation_id=command.correlation_id, **fields)


class GatewayServicer:
    def __init__(
        self,
        hub: Hub,
        terminals: Terminals,
        subscription: subscription_pb2_grpc.SubscriptionServiceStub,
        registry: registry_pb2_grpc.RegistryServiceStub,
        caller: ServiceCaller,
        market: MarketWatch,
    ) -> None:
        self._hub = hub
        self._market = market
        self._terminals = terminals
        self._subscription = subscription
        self._registry = registry
        self._caller = caller
        # Time to expiry is real time, whatever the market clock says (tests align it with the simulator's).
        self.chain_clock: Clock = WallClock()
        self.chain_rate = DEFAULT_RATE
        self.chain_recentre_seconds = RECENTRE_SECONDS
        self.chain_touch_seconds = TOUCH_SECONDS

    async def _states(
        self, stream: TerminalStream, keys: list[int], protos: list[common_pb2.InstrumentKey]
    ) -> list[feed_pb2.InstrumentState]:
        """Registers the keys on the stream (up to its limit) and says how each one stands."""
        states = []
        room = MAX_INSTRUMENTS_PER_STREAM - len(stream.keys)
        accepted: list[int] = []
        unknown: list[tuple[int, feed_pb2.InstrumentState]] = []
        for key, proto in zip(keys, protos, strict=True):
            state = feed_pb2.InstrumentState(key=proto, mode=_mode(stream.mode))
            if key in stream.keys or key in accepted:
                state.status = feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED
            elif room <= 0:
                state.status = feed_pb2.INSTRUMENT_STATUS_LIMIT_EXCEEDED
                state.message = f"a stream carries at most {MAX_INSTRUMENTS_PER_STREAM} instruments"
            else:
                room -= 1
                accepted.append(key)
                instrument = self._hub.instruments.get(key)
                if self._hub.upstream(key):
                    state.status = feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED
                    state.awaiting_first_tick = instrument is None or instrument.latest is None
                    self._mark_stale(key, state)
                else:
                    unknown.append((key, state))
            states.append(state)
        stream.add(accepted)
        await self._not_upstream(stream, unknown)
        return states

    def _mark_stale(self, key: int, state: feed_pb2.InstrumentState) -> None:
        outage = self._hub.outage(key)
        if outage is not None:
            outage.mark(state)

    async def _not_upstream(self, stream: TerminalStream, unknown: list[tuple[int, feed_pb2.InstrumentState]]) -> None:
        """Keys no shard carries: not in the master (and off the stream), or not subscribed."""
        for key, state in unknown[:_REGISTRY_LOOKUPS]:
            try:
                await self._caller.call(self._registry.GetInstrument, registry_pb2.GetInstrumentRequest(key=state.key))
            except NotFound:
                state.status = feed_pb2.INSTRUMENT_STATUS_NOT_FOUND
                state.message = "no such instrument in the master"
                stream.remove([key])
                continue
            except ServiceError:
                pass
            state.status = feed_pb2.INSTRUMENT_STATUS_NOT_SUBSCRIBED_UPSTREAM
            state.message = "not subscribed at the broker; add it to a watchlist, ticks flow once it is"
        for _, state in unknown[_REGISTRY_LOOKUPS:]:
            state.status = feed_pb2.INSTRUMENT_STATUS_NOT_SUBSCRIBED_UPSTREAM

    async def _touch_keys(self, keys: list[common_pb2.InstrumentKey]) -> None:
        with contextlib.suppress(ServiceError):
            await self._caller.call(
                self._subscription.RecordUsage,
                spb.RecordUsageRequest(user_id=current_principal().user_id, keys=keys[:1000]),
            )

    async def StreamTicks(
        self, request: feed_pb2.StreamTicksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        with self._terminals.open(_mode(request.mode), STREAM_TICKS, **_batching(request.batch_options)) as stream:
            stream.market_states = self._market.messages
            selection = request.WhichOneof("selection")
            if selection == "instruments":
                protos = list(request.instruments.keys)
                if not protos:
                    raise InvalidArgument(
                        "instruments.keys is empty: list the instruments to stream, or set my_watchlist"
                    )
                keys = [_key(k) for k in protos]
                states = await self._states(stream, keys, protos)
                await self._touch_keys(protos)
            elif selection == "my_watchlist" and request.my_watchlist:
                follower = WatchlistFollower(self._subscription, self._caller, current_principal().user_id)
                keys = await follower.initial_keys()
                stream.add(keys)
                states = [
                    feed_pb2.InstrumentState(
                        key=self._hub.instrument(k).key_proto,
                        status=feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED,
                        mode=_mode(stream.mode),
                    )
                    for k in keys
                ]
                for key, state in zip(keys, states, strict=True):
                    self._mark_stale(key, state)
                follower.follow(stream)
            else:
                raise InvalidArgument("set a selection: instruments (a list of keys) or my_watchlist: true")
            yield stream.snapshot(keys, states, market_states=self._market.messages())
            async for message in stream.run():
                yield message

    async def InteractiveStreamTicks(
        self, request_iterator: AsyncIterator[feed_pb2.InteractiveStreamTicksRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        with self._terminals.open(common_pb2.FEED_MODE_FULL, INTERACTIVE) as stream:
            stream.market_states = self._market.messages
            principal = current_principal()

            async def commands() -> None:
                principal_var.set(principal)
                async for command in request_iterator:
                    await self._command(stream, command)
                stream.close_reason = ""  # the client finished sending; keep streaming until it hangs up

            stream.spawn(commands(), "gateway-interactive-commands")
            async for message in stream.run():
                yield message

    async def _command(self, stream: TerminalStream, command: feed_pb2.InteractiveStreamTicksRequest) -> None:
        kind = command.WhichOneof("command")
        if kind == "add":
            await self._add(stream, command)
        elif kind == "remove":
            keys = []
            for proto in command.remove.keys:
                with contextlib.suppress(InvalidArgument):
                    keys.append(_key(proto))
            stream.remove(keys)
            removed = [
                feed_pb2.InstrumentState(key=k, status=feed_pb2.INSTRUMENT_STATUS_REMOVED) for k in command.remove.keys
            ]
            stream.post(stream.shape.response(result=_result(command, instruments=removed)))
        elif kind == "batch_options":
            try:
                batching = _batching(command.batch_options)
            except InvalidArgument as error:
                stream.post(stream.shape.response(result=_result(command, message=error.message)))
                return
            stream.max_batch, stream.delay = batching["max_batch"], batching["delay"]
            stream.post(stream.shape.response(result=_result(command)))

    async def _add(self, stream: TerminalStream, command: feed_pb2.InteractiveStreamTicksRequest) -> None:
        if command.add.mode:
            stream.mode = command.add.mode
        protos = list(command.add.keys)
        try:
            keys = [_key(k) for k in protos]
        except InvalidArgument as error:
            refused = [
                feed_pb2.InstrumentState(key=k, status=feed_pb2.INSTRUMENT_STATUS_NOT_FOUND, message=error.message)
                for k in protos
            ]
            stream.post(stream.shape.response(result=_result(command, instruments=refused)))
            return
        states = await self._states(stream, keys, protos)
        stream.post(stream.shape.response(result=_result(command, instruments=states)))
        subscribed = [k for k, s in zip(keys, states, strict=True) if s.status == feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED]
        stale = [s for s in states if s.stale]  # the rest is in the CommandResult
        stream.post(stream.snapshot(subscribed, stale, command.correlation_id, self._market.messages()))
        await self._touch_keys(protos)

    async def GetSnapshot(
        self, request: feed_pb2.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> feed_pb2.GetSnapshotResponse:
        if not request.keys:
            raise InvalidArgument("keys is empty: give the instruments whose last values you want")
        if len(request.keys) > MAX_SNAPSHOT_KEYS:
            raise InvalidArgument(f"{len(request.keys)} keys asked; at most {MAX_SNAPSHOT_KEYS} per call")
        mode = _mode(request.mode)
        response = feed_pb2.GetSnapshotResponse()
        for proto in request.keys:
            key = _key(proto)
            instrument = self._hub.instruments.get(key)
            if instrument is not None and instrument.latest is not None:
                response.ticks.append(instrument.latest.message(mode))
            else:
                response.missing_keys.append(proto)
            outage = self._hub.outage(key)
            if outage is not None:
                stale = feed_pb2.InstrumentState(key=proto, status=feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED, mode=mode)
                outage.mark(stale)
                response.stale.append(stale)
        return response

    async def GetShardStatus(
        self, request: feed_pb2.GetShardStatusRequest, context: grpc.aio.ServicerContext
    ) -> feed_pb2.GetShardStatusResponse:
        statuses = self._hub.statuses()
        if request.HasField("shard_id"):
            if not 0 <= request.shard_id < len(statuses):
                raise InvalidArgument(f"shard_id {request.shard_id} is out of range: accepted 0..{len(statuses) - 1}")
            statuses = [statuses[request.shard_id]]
        return feed_pb2.GetShardStatusResponse(shards=statuses)

    async def GetMarketState(
        self, request: feed_pb2.GetMarketStateRequest, context: grpc.aio.ServicerContext
    ) -> feed_pb2.GetMarketStateResponse:
        segments = requested_segments(request.exchange_segments)
        as_of, states = self._market.states_now(segments)
        return feed_pb2.GetMarketStateResponse(segments=[s.message() for s in states], as_of=timestamp(as_of))

    async def StreamOptionChain(
        self, request: feed_pb2.StreamOptionChainRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[feed_pb2.StreamOptionChainResponse]:
        asked = ChainRequest.of(request)
        user_id = current_principal().user_id
        stubs = (self._caller, self._subscription, self._registry)
        watch = ChainWatch(self._hub, await open_window(asked, user_id, *stubs), self.chain_recentre_seconds)
        clock, rate = self.chain_clock, self.chain_rate

        def compute(window: Window) -> feed_pb2.OptionChainUpdate:
            return chain_update(window, watch.quote, watch.stale, clock.now(), rate)

        async def recentre(window: Window, price: float) -> Window:
            return await recentred(asked, window, price, *stubs)

        touching = asyncio.create_task(self._touch_chain(user_id, watch), name=f"chain-touch-{user_id}")
        try:
            async for update in watch.updates(asked.interval, compute, recentre):
                yield feed_pb2.StreamOptionChainResponse(update=update)
        finally:
            cancel_soon([touching])

    async def _touch_chain(self, user_id: str, watch: ChainWatch) -> None:
        """A watched chain is in use: its item keeps its place in the LRU order, as the items
        of a followed watchlist do, so the budget evicts what nobody looks at first."""
        while True:
            await asyncio.sleep(self.chain_touch_seconds)
            with contextlib.suppress(ServiceError):  # best effort: the next touch retries
                await self._caller.call(
                    self._subscription.RecordUsage,
                    spb.RecordUsageRequest(user_id=user_id, item_ids=[watch.window.item_id]),
                )


def _serialize(message: Any) -> bytes:
    """Stream responses may be pre-serialised bytes (tick batches) or messages."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def register(servicer: GatewayServicer, server: grpc.aio.Server) -> None:
    """Like the generated add_GatewayServiceServicer_to_server, but the tick streams accept
    pre-serialised batches."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "StreamTicks": grpc.unary_stream_rpc_method_handler(
            servicer.StreamTicks,
            request_deserializer=feed_pb2.StreamTicksRequest.FromString,
            response_serializer=_serialize,
        ),
        "InteractiveStreamTicks": grpc.stream_stream_rpc_method_handler(
            servicer.InteractiveStreamTicks,
            request_deserializer=feed_pb2.InteractiveStreamTicksRequest.FromString,
            response_serializer=_serialize,
        ),
        "GetSnapshot": grpc.unary_unary_rpc_method_handler(
            servicer.GetSnapshot,
            request_deserializer=feed_pb2.GetSnapshotRequest.FromString,
            response_serializer=feed_pb2.GetSnapshotResponse.SerializeToString,
        ),
        "GetShardStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetShardStatus,
            request_deserializer=feed_pb2.GetShardStatusRequest.FromString,
            response_serializer=feed_pb2.GetShardStatusResponse.SerializeToString,
        ),
        "GetMarketState": grpc.unary_unary_rpc_method_handler(
            servicer.GetMarketState,
            request_deserializer=feed_pb2.GetMarketStateRequest.FromString,
            response_serializer=feed_pb2.GetMarketStateResponse.SerializeToString,
        ),
        "StreamOptionChain": grpc.unary_stream_rpc_method_handler(
            servicer.StreamOptionChain,
            request_deserializer=feed_pb2.StreamOptionChainRequest.FromString,
            response_serializer=feed_pb2.StreamOptionChainResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
