"""The terminal's gRPC side: the my-watchlist stream read into the model (reopened with
back-off when it breaks) and the watchlist commands. No widgets here."""

from __future__ import annotations

import functools
from collections.abc import Callable

import grpc
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.registry.v1 import registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as spb
from dataserver.subscription.v1 import subscription_pb2_grpc

from terminal.chain import GatewayChainSource
from terminal.model import TerminalModel
from terminal.retry import Backoff, why


class Connection:
    """The three services' stubs. Channels open on first use, so in the loop that uses them
    (textual's `App.run` starts its own loop: a channel made before it is bound to another)."""

    def __init__(self, gateway: str, subscription: str, registry: str, token: str = "") -> None:
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._addresses = (gateway, subscription, registry)
        self._channels: list[grpc.aio.Channel] = []

    def _channel(self, index: int) -> grpc.aio.Channel:
        if not self._channels:
            self._channels = [grpc.aio.insecure_channel(a) for a in self._addresses]
        return self._channels[index]

    @functools.cached_property
    def gateway(self) -> feed_pb2_grpc.GatewayServiceStub:
        return feed_pb2_grpc.GatewayServiceStub(self._channel(0))

    @functools.cached_property
    def subscription(self) -> subscription_pb2_grpc.SubscriptionServiceStub:
        return subscription_pb2_grpc.SubscriptionServiceStub(self._channel(1))

    @functools.cached_property
    def registry(self) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(self._channel(2))

    def chain_source(self, model: TerminalModel) -> GatewayChainSource:
        return GatewayChainSource(lambda: self.gateway, self.metadata, model.say)

    async def items(self) -> list[spb.WatchlistItem]:
        items: list[spb.WatchlistItem] = []
        token = ""
        while True:
            page = await self.subscription.ListWatchlistItems(
                spb.ListWatchlistItemsRequest(page_size=500, page_token=token), metadata=self.metadata, timeout=10
            )
            items += page.watchlist_items
            token = page.next_page_token
            if not token:
                return items

    async def follow(self, model: TerminalModel, changed: Callable[[], None] = lambda: None) -> None:
        """Reads the my-watchlist stream into `model` until cancelled, reopening it after a break."""
        backoff = Backoff()
        while True:
            model.connection = "connecting"
            changed()
            call = self.gateway.StreamTicks(feed_pb2.StreamTicksRequest(my_watchlist=True), metadata=self.metadata)
            try:
                model.set_items(await self.items())
                async for response in call:
                    model.apply(response)
                    backoff.reset()
                    changed()
                error = "the stream ended"
            except (grpc.aio.AioRpcError, OSError) as failure:
                error = why(failure)
            finally:
                call.cancel()
            model.connection = f"disconnected ({error}); retrying in {backoff.delay:g} s"
            model.say(f"stream lost: {error}")
            changed()
            await backoff.wait()

    async def add(self, symbol: str) -> str:
        reply = await self.subscription.AddWatchlistItem(
            spb.AddWatchlistItemRequest(symbol=symbol.upper()), metadata=self.metadata, timeout=30
        )
        evicted = "".join(f"; evicted {e.symbol}: {e.message}" for e in reply.evictions)
        return f"{'added' if reply.created else 'already there:'} {reply.watchlist_item.symbol}{evicted}"

    async def remove(self, item_id: str) -> None:
        await self.subscription.RemoveWatchlistItem(
            spb.RemoveWatchlistItemRequest(item_id=item_id), metadata=self.metadata, timeout=30
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
