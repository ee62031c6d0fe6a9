"""The option chain view's data: a source that says what the chain of an underlying is and
prices it. Today the registry gives the strikes and the watchlist stream the ticks (no IV
or greeks: shown as "—"); a source over the gateway's StreamOptionChain can replace it
behind the same `ChainSource` interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as spb
from dataserver.subscription.v1 import subscription_pb2_grpc

from terminal.model import TerminalModel, best_bid_ask, change_of

STRIKES_EACH_SIDE = 10
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Leg:
    """One option (a call or a put) at a strike."""

    ltp: float | None
    change: float | None
    bid: float | None
    ask: float | None
    volume: int | None
    open_interest: int | None
    implied_volatility: float | None
    delta: float | None
    stale: bool


@dataclass(frozen=True)
class ChainRow:
    strike: float
    call: Leg | None
    put: Leg | None
    atm: bool


@dataclass(frozen=True)
class ChainView:
    symbol: str
    expiry_date: str
    underlying_price: float | None
    atm_strike: float
    rows: list[ChainRow]


class ChainSource(Protocol):
    async def open(self, symbol: str) -> None:
        """Starts following `symbol`'s chain (nearest expiry); raises with a readable message."""

    def view(self) -> ChainView | None:
        """The chain as it stands now; None before `open` succeeded."""


def leg(model: TerminalModel, instrument: common_pb2.Instrument | None) -> Leg | None:
    if instrument is None:
        return None
    tick = model.tick(instrument.key)
    bid, ask = best_bid_ask(tick)
    return Leg(
        ltp=tick.last_price if tick else None,
        change=change_of(tick)[0],
        bid=bid,
        ask=ask,
        volume=tick.volume if tick else None,
        open_interest=tick.open_interest if tick else None,
        implied_volatility=None,
        delta=None,
        stale=model.is_stale(instrument.key),
    )


def nearest_strike(strikes: list[float], price: float | None, fallback: float) -> float:
    if not strikes or not price:
        return fallback
    return min(strikes, key=lambda s: abs(s - price))


def chain_view(chain: registry_pb2.GetOptionChainResponse, model: TerminalModel) -> ChainView:
    """The registry's chain priced from the model's ticks; ATM follows the underlying's last price."""
    underlying = model.tick(chain.underlying.key)
    price = underlying.last_price if underlying and underlying.last_price else None
    strikes = [s.strike_price for s in chain.strikes]
    atm = nearest_strike(strikes, price, chain.atm_strike)
    rows = [
        ChainRow(
            strike=s.strike_price,
            call=leg(model, s.call if s.HasField("call") else None),
            put=leg(model, s.put if s.HasField("put") else None),
            atm=s.strike_price == atm,
        )
        for s in chain.strikes
    ]
    return ChainView(
        chain.underlying.underlying_symbol or chain.underlying.trading_symbol, chain.expiry_date, price, atm, rows
    )


class RegistryChainSource:
    """Adds the chain to the user's watchlist (so its ticks arrive on the watchlist stream,
    under the user's budget and eviction) and takes its strikes from the registry."""

    def __init__(
        self,
        model: TerminalModel,
        registry: registry_pb2_grpc.RegistryServiceStub,
        subscription: subscription_pb2_grpc.SubscriptionServiceStub,
        metadata: Metadata,
    ) -> None:
        self._model = model
        self._registry = registry
        self._subscription = subscription
        self._metadata = metadata
        self._chain: registry_pb2.GetOptionChainResponse | None = None

    async def open(self, symbol: str) -> None:
        added = await self._subscription.AddWatchlistItem(
            spb.AddWatchlistItemRequest(symbol=symbol, strikes_each_side=STRIKES_EACH_SIDE),
            metadata=self._metadata,
            timeout=30,
        )
        item = added.watchlist_item
        self._model.items[item.item_id] = item
        # The item's own window: the same expiry and ATM as the instruments it subscribed.
        request = registry_pb2.GetOptionChainRequest(
            underlying_symbol=symbol,
            expiry_date=item.expiry_date,
            strikes_each_side=item.strikes_each_side or STRIKES_EACH_SIDE,
        )
        if item.atm_strike:
            request.underlying_price = item.atm_strike
        else:
            request.use_last_price = True
        self._chain = await self._registry.GetOptionChain(request, metadata=self._metadata, timeout=30)

    def view(self) -> ChainView | None:
        return chain_view(self._chain, self._model) if self._chain is not None else None
