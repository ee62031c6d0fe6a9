"""A live option chain: the window of strikes the registry resolves, its values from the hub's
last-value cache, and each update's forward, IV and greeks (chain_math).

The forward is put-call parity's where a strike near the money is priced on both sides, else
the last price of the future listed for the expiry (a future's price is the forward: no carry),
else the underlying carried at the rate. A leg is stale while its shard has an outage or while
no shard subscribes it (its watchlist item evicted, or the subscription still being placed).

A ChainWatch attaches to the hub only while a stream is open, so a chain nobody watches costs
nothing; the stream recomputes at most once per interval, and only after a value changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache

from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as spb
from dataserver.subscription.v1 import subscription_pb2_grpc

from services.common.clients import ServiceCaller
from services.common.errors import InvalidArgument, ServiceError
from services.common.keys import proto_wire_key, wire_key_proto
from services.common.market_calendar import IST
from services.common.timestamps import timestamp
from services.dhan.decode import ProtocolErrors, decode_packet
from services.dhan.packets import FullPacket, OIPacket, Packet, PrevClosePacket, QuotePacket, TickerPacket
from services.feed.gateway import chain_math
from services.feed.gateway.hub import Hub, Instrument
from services.feed.gateway.prices import SCALES, rounded
from services.feed.gateway.upstream import Outage
from services.feed.gateway.values import Value

DEFAULT_STRIKES_EACH_SIDE = 10
MAX_STRIKES_EACH_SIDE = 50
DEFAULT_INTERVAL_SECONDS = 0.25
MIN_INTERVAL_SECONDS = 0.05
MAX_INTERVAL_SECONDS = 10.0
# Indian cost of carry / discount rate, used to discount parity and to carry the spot when no
# strike is priced on both sides.
DEFAULT_RATE = 0.065
# Least time between two moves of a window following the ATM.
RECENTRE_SECONDS = 5.0

_DECODE_ERRORS = ProtocolErrors()  # never counts: the hub keeps only packets of the right code and size
_NO_PRICE = feed_pb2.GREEKS_STATUS_NO_PRICE
_NO_IV = feed_pb2.GREEKS_STATUS_NO_IMPLIED_VOLATILITY
_NO_FORWARD = feed_pb2.GREEKS_STATUS_NO_FORWARD
NOT_SUBSCRIBED = "not subscribed upstream"


@dataclass(frozen=True, slots=True)
class Row:
    strike: float
    call: int | None  # wire keys
    put: int | None


@dataclass(frozen=True, slots=True)
class Window:
    """The strikes of one chain around the ATM, as the registry resolved them."""

    underlying: int
    expiry: date
    rows: tuple[Row, ...]
    atm: float  # the strike the window is centred on
    item_id: str = ""  # the caller's watchlist item holding the chain's subscriptions
    future: int | None = None  # the future listed for the expiry (a commodity's is its underlying)

    @property
    def keys(self) -> list[int]:
        legs = [k for row in self.rows for k in (row.call, row.put) if k is not None]
        listed = [self.future] if self.future is not None and self.future != self.underlying else []
        return [self.underlying, *legs, *listed]

    @classmethod
    def of(cls, response: registry_pb2.GetOptionChainResponse, item_id: str = "") -> Window:
        def key(strike: registry_pb2.ChainStrike, leg: str) -> int | None:
            return proto_wire_key(getattr(strike, leg).key) if strike.HasField(leg) else None

        rows = tuple(Row(s.strike_price, key(s, "call"), key(s, "put")) for s in response.strikes)
        expiry = date.fromisoformat(response.expiry_date)
        future = proto_wire_key(response.future.key) if response.HasField("future") else None
        return cls(proto_wire_key(response.underlying.key), expiry, rows, response.atm_strike, item_id, future)


@dataclass(frozen=True, slots=True)
class ChainRequest:
    symbol: str
    expiry_date: str
    strikes_each_side: int
    interval: float

    @classmethod
    def of(cls, request: feed_pb2.StreamOptionChainRequest) -> ChainRequest:
        symbol = request.underlying_symbol.strip().upper()
        if not symbol:
            raise InvalidArgument("underlying_symbol is empty: give the underlying, e.g. NIFTY")
        each = request.strikes_each_side or DEFAULT_STRIKES_EACH_SIDE
        if not 1 <= each <= MAX_STRIKES_EACH_SIDE:
            raise InvalidArgument(
                f"strikes_each_side is {each}; accepted 0 (the default, 10) to {MAX_STRIKES_EACH_SIDE}"
            )
        interval = request.update_interval.ToTimedelta().total_seconds() or DEFAULT_INTERVAL_SECONDS
        if not MIN_INTERVAL_SECONDS <= interval <= MAX_INTERVAL_SECONDS:
            raise InvalidArgument(f"update_interval is {interval} s; accepted 0 (the default, 250 ms) or 50 ms to 10 s")
        return cls(symbol, request.expiry_date, each, interval)


async def open_window(
    request: ChainRequest,
    user_id: str,
    caller: ServiceCaller,
    subscription: subscription_pb2_grpc.SubscriptionServiceStub,
    registry: registry_pb2_grpc.RegistryServiceStub,
) -> Window:
    """Adds the chain to the user's watchlist (its budget, quota and eviction apply), then takes
    the same window (the item's expiry and ATM) from the registry with its strikes' instruments."""
    added = await caller.call(
        subscription.AddWatchlistItem,
        spb.AddWatchlistItemRequest(
            symbol=request.symbol,
            expiry_date=request.expiry_date,
            strikes_each_side=request.strikes_each_side,
            user_id=user_id,
        ),
    )
    item = added.watchlist_item
    return await _window(request, item.item_id, item.expiry_date, item.atm_strike, caller, registry)


async def recentred(
    request: ChainRequest,
    window: Window,
    price: float,
    caller: ServiceCaller,
    subscription: subscription_pb2_grpc.SubscriptionServiceStub,
    registry: registry_pb2_grpc.RegistryServiceStub,
) -> Window:
    """The window moved to `price`'s ATM: the watchlist item is re-centred (the subscription
    service's hysteresis decides whether its subscriptions move), and the registry gives the
    strikes around the new ATM."""
    with contextlib.suppress(ServiceError):  # the item may be gone (evicted); the window still moves
        await caller.call(
            subscription.RecenterChain, spb.RecenterChainRequest(item_id=window.item_id, underlying_price=price)
        )
    return await _window(request, window.item_id, window.expiry.isoformat(), price, caller, registry)


async def _window(
    request: ChainRequest,
    item_id: str,
    expiry_date: str,
    price: float,
    caller: ServiceCaller,
    registry: registry_pb2_grpc.RegistryServiceStub,
) -> Window:
    chain = await caller.call(
        registry.GetOptionChain,
        registry_pb2.GetOptionChainRequest(
            underlying_symbol=request.symbol,
            expiry_date=expiry_date,
            underlying_price=price,
            strikes_each_side=request.strikes_each_side,
        ),
    )
    return Window.of(chain, item_id)


@dataclass(frozen=True, slots=True)
class Quote:
    """What the chain shows of one instrument's last value, prices as terminals see them."""

    key: common_pb2.InstrumentKey
    last_price: float
    previous_close: float
    bid_price: float
    ask_price: float
    volume: int
    open_interest: int
    previous_open_interest: int

    @classmethod
    def of(cls, value: Value, previous: tuple[float, int]) -> Quote:
        """`previous`: the previous close and OI, decoded apart (they change once a day)."""
        tick, oi = _decoded(value.tick), _decoded(value.oi)
        ltp = bid = ask = 0.0
        volume = open_interest = 0
        if isinstance(tick, (TickerPacket, QuotePacket, FullPacket)):
            scale = SCALES[tick.segment]
            ltp = rounded(tick.ltp, scale)
            if not isinstance(tick, TickerPacket):
                volume = tick.volume
            if isinstance(tick, FullPacket):
                open_interest = tick.oi
                bid, ask = rounded(tick.bid_price_1, scale), rounded(tick.ask_price_1, scale)
        if isinstance(oi, OIPacket):
            open_interest = oi.oi
        return cls(value.instrument.key_proto, ltp, previous[0], bid, ask, volume, open_interest, previous[1])


def _previous(packet: bytes | None) -> tuple[float, int]:
    prev = _decoded(packet)
    if isinstance(prev, PrevClosePacket):
        return rounded(prev.prev_close, SCALES[prev.segment]), prev.prev_oi
    return 0.0, 0


def _decoded(packet: bytes | None) -> Packet | None:
    return decode_packet(packet, _DECODE_ERRORS) if packet is not None else None


@dataclass(slots=True)
class Leg:
    """One instrument's Quote, decoded once per value (its previous-close packet, carried from
    value to value, once per packet)."""

    value: Value | None = None
    quote: Quote | None = None
    prev: bytes | None = None
    previous: tuple[float, int] = (0.0, 0)

    def of(self, value: Value | None) -> Quote | None:
        if value is not self.value:
            self.value = value
            if value is not None and value.prev is not self.prev:
                self.prev, self.previous = value.prev, _previous(value.prev)
            self.quote = Quote.of(value, self.previous) if value is not None else None
        return self.quote


class ChainWatch:
    """A hub subscriber for one stream: any change to the chain's instruments sets `changed`."""

    def __init__(self, hub: Hub, window: Window, recentre_seconds: float = RECENTRE_SECONDS) -> None:
        self.hub = hub
        self.window = window
        self.recentre_seconds = recentre_seconds
        self.changed = asyncio.Event()
        self.changed.set()  # the first update goes out at once
        self._instruments: dict[int, Instrument] = {}
        self._legs: dict[int, Leg] = {}

    def mark(self, key: int, sequence: int) -> None:
        self.changed.set()

    def upstream_changed(self, event: feed_pb2.UpstreamStatusChange) -> None:
        self.changed.set()

    def status_changed(self, instrument: Instrument) -> None:
        self.changed.set()

    def attach(self) -> None:
        keys = self.window.keys
        self.hub.attach(self, keys)
        self._instruments = {k: self.hub.instrument(k) for k in keys}
        self._legs = {k: Leg() for k in keys}

    def detach(self) -> None:
        self.hub.detach(self, self.window.keys)
        self._instruments, self._legs = {}, {}

    def quote(self, key: int) -> Quote | None:
        return self._legs[key].of(self._instruments[key].latest)

    def stale(self, key: int) -> str:
        """Why the instrument's last value is stale, for people; empty while it is live."""
        if not self._instruments[key].mode:
            return NOT_SUBSCRIBED
        outage = self.hub.outage(key)
        return "" if outage is None else stale_reason(outage, self._instruments[key].shard_id)

    async def updates(
        self,
        interval: float,
        compute: Callable[[Window], feed_pb2.OptionChainUpdate],
        recentre: Callable[[Window, float], Awaitable[Window]],
    ) -> AsyncIterator[feed_pb2.OptionChainUpdate]:
        """Updates at most once per `interval` after a change; the window follows the ATM, moved
        at most once per recentre_seconds."""
        self.attach()
        moved_at = time.monotonic()
        try:
            while True:
                await self.changed.wait()
                self.changed.clear()
                update = compute(self.window)
                yield update
                atm = update.atm_strike
                if atm and atm != self.window.atm and time.monotonic() - moved_at >= self.recentre_seconds:
                    moved_at = time.monotonic()
                    with contextlib.suppress(ServiceError):  # the registry is away: keep the window, try later
                        await self._move(await recentre(self.window, update.underlying_price))
                await asyncio.sleep(interval)
        finally:
            self.detach()

    async def _move(self, window: Window) -> None:
        self.detach()
        self.window = window
        self.attach()
        self.changed.set()


@lru_cache(maxsize=64)
def stale_reason(outage: Outage, shard_id: int | None) -> str:
    """An outage as a leg's stale_reason: the shard, its reason and since when (IST)."""
    since = datetime.fromtimestamp(outage.since, IST).strftime("%H:%M:%S")
    shard = "" if shard_id is None or outage.reason.startswith("shard ") else f"shard {shard_id}: "
    return f"{shard}{outage.reason}, since {since} IST"


def _price(quote: Quote | None) -> float:
    return quote.last_price if quote is not None and quote.last_price > 0.0 else math.nan


def chain_update(
    window: Window,
    quote: Callable[[int], Quote | None],
    stale: Callable[[int], str],
    now: datetime,
    rate: float,
) -> feed_pb2.OptionChainUpdate:
    """The chain's message from the instruments' last values: forward, then each leg's greeks.
    `stale` says why an instrument's value is stale ("" while live)."""
    years = chain_math.years_to_expiry(now, window.expiry)
    spot = _price(quote(window.underlying))
    strikes = [r.strike for r in window.rows]
    calls = [_price(quote(r.call)) if r.call is not None else math.nan for r in window.rows]
    puts = [_price(quote(r.put)) if r.put is not None else math.nan for r in window.rows]
    centre = spot if not math.isnan(spot) else (strikes[len(strikes) // 2] if strikes else math.nan)
    update = feed_pb2.OptionChainUpdate(
        underlying=wire_key_proto(window.underlying),
        expiry_date=window.expiry.isoformat(),
        underlying_price=0.0 if math.isnan(spot) else spot,
        years_to_expiry=years,
        rate=rate,
        as_of=timestamp(now),
    )
    if window.future is not None:
        update.future.CopyFrom(wire_key_proto(window.future))
    forward = _forward(update, window, quote, strikes, calls, puts, centre, spot)
    atm = chain_math.atm_strike(strikes, centre) if not math.isnan(centre) else None
    update.atm_strike = atm or 0.0
    call_oi = put_oi = 0
    for row, call_price, put_price in zip(window.rows, calls, puts, strict=True):
        out = update.rows.add(strike_price=row.strike)
        if row.call is not None:
            call_oi += _leg(
                out.call, row.call, quote(row.call), call_price, stale, forward, row.strike, years, rate, True
            )
        if row.put is not None:
            put_oi += _leg(out.put, row.put, quote(row.put), put_price, stale, forward, row.strike, years, rate, False)
    update.put_call_ratio = put_oi / call_oi if call_oi else 0.0
    return update


def _forward(
    update: feed_pb2.OptionChainUpdate,
    window: Window,
    quote: Callable[[int], Quote | None],
    strikes: list[float],
    calls: list[float],
    puts: list[float],
    centre: float,
    spot: float,
) -> float | None:
    """Parity, else the listed future's price, else the spot carried; sets the update's forward
    and its source. A commodity's underlying is the future its options exercise into (the
    listed one): its price is the forward already, never carried again."""
    years, rate = update.years_to_expiry, update.rate
    forward = chain_math.forward_from_parity(strikes, calls, puts, centre, years, rate) if strikes else None
    if forward is not None:
        update.forward_source = feed_pb2.FORWARD_SOURCE_PUT_CALL_PARITY
    else:
        listed = _price(quote(window.future)) if window.future is not None else math.nan
        if not math.isnan(listed):
            forward = listed
            update.forward_source = feed_pb2.FORWARD_SOURCE_LISTED_FUTURE
        elif not math.isnan(spot):  # never a commodity's future: the branch above took its price
            forward = spot * math.exp(rate * years)
            update.forward_source = feed_pb2.FORWARD_SOURCE_SPOT_CARRY
    if forward is not None:
        update.forward_price = forward
    return forward


def _leg(
    out: feed_pb2.ChainOption,
    key: int,
    quote: Quote | None,
    price: float,
    stale: Callable[[int], str],
    forward: float | None,
    strike: float,
    years: float,
    rate: float,
    is_call: bool,
) -> int:
    """Fills one option's fields; returns its open interest (for the put-call ratio)."""
    out.key.CopyFrom(quote.key if quote is not None else wire_key_proto(key))
    reason = stale(key)
    if reason:
        out.stale, out.stale_reason = True, reason
    if quote is not None:
        out.last_price = quote.last_price
        if quote.previous_close:
            out.change = quote.last_price - quote.previous_close
        out.bid_price, out.ask_price = quote.bid_price, quote.ask_price
        out.volume = quote.volume
        out.open_interest = quote.open_interest
        if quote.previous_open_interest:
            out.open_interest_change = quote.open_interest - quote.previous_open_interest
    if math.isnan(price):
        out.greeks_status = _NO_PRICE
    elif forward is None:
        out.greeks_status = _NO_FORWARD
    else:
        greeks = chain_math.option_greeks(price, forward, strike, years, rate, is_call)
        if greeks is None:
            out.greeks_status = _NO_IV
        else:
            out.greeks_status = feed_pb2.GREEKS_STATUS_COMPUTED
            out.implied_volatility, out.delta, out.gamma = greeks.implied_volatility, greeks.delta, greeks.gamma
            out.theta, out.vega = greeks.theta, greeks.vega
    return out.open_interest
