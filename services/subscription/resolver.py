"""Turns a symbol into a unit (underlying + option window + the expiry's listed future) through
the registry.

The ATM price comes from the feed's last price, else the caller's price, else the master's
previous close (the registry's "use last price" fallback).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import grpc
from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.clients import ServiceCaller
from services.common.errors import InvalidArgument, NotFound
from services.common.instruments import PROTO_TO_INSTRUMENT_TYPE
from services.common.keys import Key, key_from_proto, key_proto
from services.common.last_prices import LastPriceSource
from services.subscription.model import Instrument, ResolvedUnit

_WIDE_TYPES = frozenset({"INDEX", "FUTCOM", "FUTIDX"})


@dataclass(frozen=True)
class ChainWidths:
    stock: int
    index: int
    maximum: int

    def check(self, requested: int) -> None:
        if not 0 <= requested <= self.maximum:
            raise InvalidArgument(
                f"strikes_each_side {requested} is out of range: accepted 1..{self.maximum}, or 0 for the default "
                f"({self.stock} for stocks, {self.index} for indices and commodities)"
            )

    def default_for(self, underlying_type: str) -> int:
        return self.index if underlying_type in _WIDE_TYPES else self.stock


def _instrument(proto: common_pb2.Instrument) -> Instrument:
    return Instrument(key_from_proto(proto.key, "the registry's instrument key"), proto.trading_symbol)


class UnitResolver:
    def __init__(
        self, channel: grpc.aio.Channel, caller: ServiceCaller, prices: LastPriceSource, widths: ChainWidths
    ) -> None:
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self._caller = caller
        self._prices = prices
        self.widths = widths

    async def option_expiries(self, symbol: str) -> list[str]:
        reply = await self._caller.call(
            self._stub.ListExpiries,
            registry_pb2.ListExpiriesRequest(
                underlying_symbol=symbol, kind=registry_pb2.DERIVATIVE_KIND_OPTIONS, page_size=500
            ),
        )
        return [e.expiry_date for e in reply.expiries]

    async def nearest_futures(self, symbol: str, count: int) -> list[Instrument]:
        """The underlying's `count` nearest futures, nearest first (fewer when fewer are listed)."""
        reply = await self._caller.call(
            self._stub.SearchInstruments,
            registry_pb2.SearchInstrumentsRequest(
                query=f"{symbol} FUT",
                instrument_types=[common_pb2.INSTRUMENT_TYPE_FUTCOM, common_pb2.INSTRUMENT_TYPE_FUTIDX],
                page_size=50,
            ),
        )
        futures = sorted(
            (f for f in reply.instruments if f.underlying_symbol == symbol and f.expiry_date),
            key=lambda f: f.expiry_date,
        )
        return [_instrument(f) for f in futures[:count]]

    async def resolve(
        self,
        symbol: str,
        *,
        expiry: str = "",
        strikes_each_side: int = 0,
        price_hint: float = 0.0,
        underlying_only: bool = False,
    ) -> ResolvedUnit:
        symbol = symbol.strip().upper()
        if not symbol:
            raise InvalidArgument("symbol is required: a stock, index or commodity, e.g. RELIANCE, NIFTY, CRUDEOIL")
        self.widths.check(strikes_each_side)
        if expiry:
            try:
                date.fromisoformat(expiry)
            except ValueError:
                raise InvalidArgument(f"expiry_date {expiry!r} is malformed: expected YYYY-MM-DD") from None
        expiries = await self.option_expiries(symbol)
        if expiry and expiry not in expiries:
            listed = ", ".join(expiries[:12]) or "none"
            raise NotFound(f"{symbol} has no options expiring {expiry}; listed expiries: {listed}")
        if not expiries or underlying_only:
            return await self._underlying_only(symbol, expiries, underlying_only)
        underlying_type = await self._underlying_type(symbol)
        width = strikes_each_side or self.widths.default_for(underlying_type)
        return await self.window(symbol, expiry or expiries[0], width, price_hint=price_hint)

    async def window(
        self, symbol: str, expiry: str, width: int, *, price: float = 0.0, price_hint: float = 0.0
    ) -> ResolvedUnit:
        """The chain window of (symbol, expiry) around the ATM: at `price` when given, else the
        feed's last price, else `price_hint`, else the master's previous close."""
        request = registry_pb2.GetOptionChainRequest(
            underlying_symbol=symbol, expiry_date=expiry, strikes_each_side=width
        )
        probe = await self._caller.call(
            self._stub.GetOptionChain,
            registry_pb2.GetOptionChainRequest(
                underlying_symbol=symbol, expiry_date=expiry, strikes_each_side=1, use_last_price=True
            ),
        )
        underlying = _instrument(probe.underlying)
        live = None if price > 0 else await self._prices.last_price(*underlying.key)
        if price > 0:
            request.underlying_price = price
        elif live:
            request.underlying_price = live
        elif price_hint > 0:
            request.underlying_price = price_hint
        else:
            request.use_last_price = True
        chain = (
            probe
            if width == 1 and request.use_last_price
            else await self._caller.call(self._stub.GetOptionChain, request)
        )
        options: list[Instrument] = []
        for strike in chain.strikes:
            if strike.HasField("call"):
                options.append(_instrument(strike.call))
            if strike.HasField("put"):
                options.append(_instrument(strike.put))
        return ResolvedUnit(
            symbol=symbol,
            underlying=underlying,
            underlying_type=PROTO_TO_INSTRUMENT_TYPE.get(chain.underlying.instrument_type, ""),
            expiry=date.fromisoformat(chain.expiry_date),
            atm_strike=chain.atm_strike,
            strike_step=chain.strike_step,
            underlying_price=chain.underlying_price,
            price_source=chain.price_source,
            strikes_each_side=width,
            options=tuple(options),
            future=_instrument(chain.future) if chain.HasField("future") else None,
        )

    async def instrument(self, key: Key) -> Instrument:
        reply = await self._caller.call(self._stub.GetInstrument, registry_pb2.GetInstrumentRequest(key=key_proto(key)))
        return _instrument(reply.instrument)

    async def _underlying_type(self, symbol: str) -> str:
        try:
            reply = await self._caller.call(
                self._stub.ResolveTradingSymbol, registry_pb2.ResolveTradingSymbolRequest(trading_symbol=symbol)
            )
        except NotFound:
            return "FUTCOM"  # commodities are known only by their contracts
        return PROTO_TO_INSTRUMENT_TYPE.get(reply.instruments[0].instrument_type, "")

    async def _underlying_only(self, symbol: str, expiries: list[str], requested: bool) -> ResolvedUnit:
        if expiries:  # the chain knows the underlying's feed instrument (a future for commodities)
            chain = await self._caller.call(
                self._stub.GetOptionChain,
                registry_pb2.GetOptionChainRequest(underlying_symbol=symbol, strikes_each_side=1, use_last_price=True),
            )
            underlying = chain.underlying
        else:
            reply = await self._caller.call(
                self._stub.ResolveTradingSymbol, registry_pb2.ResolveTradingSymbolRequest(trading_symbol=symbol)
            )
            underlying = reply.instruments[0]
        return ResolvedUnit(
            symbol=symbol,
            underlying=_instrument(underlying),
            underlying_type=PROTO_TO_INSTRUMENT_TYPE.get(underlying.instrument_type, ""),
            expiry=None,
            atm_strike=None,
            strike_step=None,
            underlying_price=None,
            price_source=registry_pb2.PRICE_SOURCE_UNSPECIFIED,
            strikes_each_side=0,
        )
