"""The option chain view's data: a source that follows the chain of an underlying, the
gateway's StreamOptionChain (prices with IV and greeks computed on the server), and the view
the app draws from its latest update."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc

from terminal.retry import Backoff, why

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
    gamma: float | None = None
    theta: float | None = None
    vega: float | None = None
    no_iv: str = ""  # why there is no IV, in a word or two, when the server says


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
    forward: str = ""  # the forward and where it came from, for the header
    put_call_ratio: float | None = None
    state: str = "live"  # or why the chain is not updating


class ChainSource(Protocol):
    async def open(self, symbol: str) -> None:
        """Starts following `symbol`'s chain (nearest expiry); raises with a readable message."""

    def view(self) -> ChainView | None:
        """The chain as it stands now; None before `open` succeeded."""


def gateway_leg(option: feed_pb2.ChainOption | None) -> Leg | None:
    if option is None:
        return None
    computed = option.greeks_status == feed_pb2.GREEKS_STATUS_COMPUTED
    return Leg(
        ltp=option.last_price or None,
        change=option.change if option.last_price else None,
        bid=option.bid_price or None,
        ask=option.ask_price or None,
        volume=option.volume,
        open_interest=option.open_interest,
        implied_volatility=option.implied_volatility if computed else None,
        delta=option.delta if computed else None,
        stale=option.stale,
        gamma=option.gamma if computed else None,
        theta=option.theta if computed else None,
        vega=option.vega if computed else None,
        no_iv=NO_IV.get(option.greeks_status, ""),
    )


# Why an option shows no IV: no valid price, a price with no Black-76 IV, or no forward yet.
NO_IV = {
    feed_pb2.GREEKS_STATUS_NO_PRICE: "no price",
    feed_pb2.GREEKS_STATUS_NO_IMPLIED_VOLATILITY: "no IV",
    feed_pb2.GREEKS_STATUS_NO_FORWARD: "no fwd",
}

FORWARD_SOURCES = {
    feed_pb2.FORWARD_SOURCE_PUT_CALL_PARITY: "put-call parity",
    feed_pb2.FORWARD_SOURCE_LISTED_FUTURE: "the future",
    feed_pb2.FORWARD_SOURCE_SPOT_CARRY: "spot carried",
}


def gateway_view(symbol: str, update: feed_pb2.OptionChainUpdate, state: str = "live") -> ChainView:
    """The server's chain update as the view shows it (IV and greeks computed by the gateway)."""
    rows = [
        ChainRow(
            strike=row.strike_price,
            call=gateway_leg(row.call if row.HasField("call") else None),
            put=gateway_leg(row.put if row.HasField("put") else None),
            atm=row.strike_price == update.atm_strike,
        )
        for row in update.rows
    ]
    stale = [leg for row in update.rows for leg in (row.call, row.put) if leg.stale]
    if stale and state == "live":
        reasons = sorted({leg.stale_reason for leg in stale if leg.stale_reason})
        state = f"{len(stale)} options stale" + (f": {'; '.join(reasons)}" if reasons else "")
    source = FORWARD_SOURCES.get(update.forward_source)
    forward = f"{update.forward_price:,.2f} ({source})" if source and update.forward_price else ""
    pcr = update.put_call_ratio or None
    return ChainView(
        symbol, update.expiry_date, update.underlying_price or None, update.atm_strike, rows, forward, pcr, state
    )


class GatewayChainSource:
    """The gateway's StreamOptionChain: the server subscribes the chain as the caller's
    watchlist item, follows the ATM and sends IV and greeks at its cadence. A broken stream
    is reopened with back-off; until then the view says the chain is not updating, and why."""

    def __init__(
        self,
        gateway: Callable[[], feed_pb2_grpc.GatewayServiceStub],
        metadata: Metadata,
        say: Callable[[str], None] = lambda message: None,
    ) -> None:
        self._gateway = gateway
        self._metadata = metadata
        self._say = say
        self._symbol = ""
        self._state = "live"
        self._latest: feed_pb2.OptionChainUpdate | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, symbol: str) -> None:
        call = self._call(symbol)
        first = await call.read()  # the first update, or the refusal as an error
        if not isinstance(first, feed_pb2.StreamOptionChainResponse):
            raise RuntimeError(f"the gateway ended the option chain of {symbol}")
        if self._reader is not None:
            self._reader.cancel()
        self._symbol, self._latest, self._state = symbol.upper(), first.update, "live"
        self._reader = asyncio.create_task(self._follow(call))

    def _call(self, symbol: str) -> Any:
        request = feed_pb2.StreamOptionChainRequest(underlying_symbol=symbol, strikes_each_side=STRIKES_EACH_SIDE)
        return self._gateway().StreamOptionChain(request, metadata=self._metadata)

    async def _follow(self, call: Any) -> None:
        backoff = Backoff()
        while True:
            try:
                while isinstance(message := await call.read(), feed_pb2.StreamOptionChainResponse):
                    self._latest, self._state = message.update, "live"
                    backoff.reset()
                error = "the stream ended"
            except (grpc.aio.AioRpcError, OSError) as failure:
                error = why(failure)
            finally:
                call.cancel()
            self._state = f"not updating ({error}); reopening in {backoff.delay:g} s"
            self._say(f"option chain of {self._symbol} lost: {error}")
            await backoff.wait()
            call = self._call(self._symbol)

    def view(self) -> ChainView | None:
        if self._latest is None:
            return None
        return gateway_view(self._symbol, self._latest, self._state)
