"""StreamOptionChain on the simulator: the chain joins the caller's watchlist, updates carry
live prices with Black-76 IV and greeks on a forward from put-call parity (else the listed
future's price, else the spot carried), stale legs say why, and the stream leaves nothing
attached at the gateway once it ends."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as spb
from google.protobuf.duration_pb2 import Duration

from services.common.keys import wire_key, wire_key_proto
from services.common.market_calendar import IST
from services.feed.gateway import chain_math
from services.feed.gateway.chain import NOT_SUBSCRIBED, Quote, Row, Window, chain_update, stale_reason
from services.feed.gateway.upstream import Outage, unreachable
from simulator.market import option_price
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.registry_fixtures import NIFTY_WEEKLY, TRADING_DATE

NIFTY_MONTHLY = NIFTY_WEEKLY  # the Tuesday holiday moves the week's and the month's expiry to Monday
NIFTY_NEXT_WEEKLY = "2026-12-01"  # a weekly: no future expires that day


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    # The simulator quotes the registry's master (the same contracts and expiries).
    clock = SimulatedTime()
    async with running_feed(
        database_url, masters_dir, simulator={"trading_date": TRADING_DATE}, simulator_clock=clock.epoch
    ) as running:
        running.gateway.servicer.chain_clock = clock
        yield running


def _priced(update: feed_pb2.OptionChainUpdate) -> bool:
    computed = [
        leg
        for row in update.rows
        for leg in (row.call, row.put)
        if leg.greeks_status == feed_pb2.GREEKS_STATUS_COMPUTED
    ]
    return update.forward_source == feed_pb2.FORWARD_SOURCE_PUT_CALL_PARITY and len(computed) >= len(update.rows)


class SimulatedTime:
    """The simulator's clock, as the gateway's clock for time to expiry: a trading morning of the
    test master (whose expiries are then days ahead, not past), running at wall speed."""

    def __init__(self) -> None:
        self.offset = datetime.combine(TRADING_DATE, dtime(10, 0), IST).timestamp() - time.time()

    def epoch(self) -> float:
        return time.time() + self.offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.epoch(), IST)


async def test_option_chain_streams_iv_and_greeks_on_the_parity_forward(feed: FeedUnderTest) -> None:
    bob = await feed.subscription.user("bob")
    channel = grpc.aio.insecure_channel(feed.gateway.app.address)
    async with channel:
        stub = feed_pb2_grpc.GatewayServiceStub(channel)
        stream = stub.StreamOptionChain(
            feed_pb2.StreamOptionChainRequest(
                underlying_symbol="NIFTY", strikes_each_side=5, update_interval=Duration(nanos=100_000_000)
            ),
            metadata=bob,
        )
        update = None
        async for message in stream:
            update = message.update
            if _priced(update):
                break
        assert update is not None
        assert len(update.rows) == 11
        assert update.underlying_price > 0 and update.years_to_expiry > 0
        # The simulator prints options on spot * e^(rT) at its own rate; parity recovers it.
        carried = update.underlying_price * math.exp(0.065 * update.years_to_expiry)
        assert abs(update.forward_price - carried) / carried < 0.001
        assert update.atm_strike == min(
            (r.strike_price for r in update.rows), key=lambda k: abs(k - update.underlying_price)
        )
        assert update.put_call_ratio > 0
        for row in update.rows:
            for leg, is_call in ((row.call, True), (row.put, False)):
                if leg.greeks_status != feed_pb2.GREEKS_STATUS_COMPUTED:
                    continue
                mine = chain_math.option_greeks(
                    leg.last_price, update.forward_price, row.strike_price, update.years_to_expiry, update.rate, is_call
                )
                assert mine is not None and leg.implied_volatility == mine.implied_volatility
                assert leg.delta == mine.delta and leg.vega == mine.vega
                assert 0.02 < leg.implied_volatility < 1.0, (
                    update.years_to_expiry,
                    update.expiry_date,
                    update.forward_price,
                    update.underlying_price,
                    row.strike_price,
                    leg.last_price,
                )
                assert (leg.delta > 0) == is_call and leg.gamma > 0 and leg.vega > 0
        # The chain is the caller's watchlist item.
        listed = await feed.subscription.stub.ListWatchlistItems(spb.ListWatchlistItemsRequest(), metadata=bob)
        assert [i.symbol for i in listed.watchlist_items] == ["NIFTY"]
        stream.cancel()
    # Nobody watches: nothing of the chain stays attached at the gateway.
    await eventually(
        lambda: not any(i.subscribers for i in feed.gateway.hub.instruments.values()), what="the chain to detach"
    )


async def test_bad_chain_requests_are_refused(feed: FeedUnderTest) -> None:
    bob = await feed.subscription.user("bob")
    channel = grpc.aio.insecure_channel(feed.gateway.app.address)
    async with channel:
        stub = feed_pb2_grpc.GatewayServiceStub(channel)
        for request in (
            feed_pb2.StreamOptionChainRequest(),
            feed_pb2.StreamOptionChainRequest(underlying_symbol="NIFTY", strikes_each_side=51),
            feed_pb2.StreamOptionChainRequest(underlying_symbol="NIFTY", update_interval=Duration(seconds=11)),
        ):
            try:
                async for _ in stub.StreamOptionChain(request, metadata=bob):
                    raise AssertionError("a refused request streamed")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_chain_follows_the_atm(feed: FeedUnderTest) -> None:
    carol = await feed.subscription.user("carol")
    feed.gateway.servicer.chain_recentre_seconds = 0.0
    channel = grpc.aio.insecure_channel(feed.gateway.app.address)
    async with channel:
        stub = feed_pb2_grpc.GatewayServiceStub(channel)
        stream = stub.StreamOptionChain(
            feed_pb2.StreamOptionChainRequest(underlying_symbol="NIFTY", strikes_each_side=3), metadata=carol
        )
        first = (await stream.read()).update
        assert first.atm_strike == first.rows[3].strike_price
        assert feed.simulator.market is not None
        feed.simulator.market.move("index", "NIFTY", 0.6)  # a few strikes up, inside the listed strikes
        while True:
            update = (await asyncio.wait_for(stream.read(), 10)).update
            if update.atm_strike > first.atm_strike and update.rows[0].strike_price > first.rows[0].strike_price:
                break
        assert update.atm_strike in [r.strike_price for r in update.rows]
        stream.cancel()


# -- the forward's source and stale legs, on chain_update itself ---------------------------------

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=IST)
EXPIRY = date(2026, 11, 23)
RATE = 0.065
INDEX, FUTURE, CRUDE = wire_key("IDX_I", 13), wire_key("NSE_FNO", 7494208), wire_key("MCX_COMM", 309637696)
STRIKES = (25_800.0, 25_850.0, 25_900.0, 25_950.0, 26_000.0)


def _window(underlying: int, future: int | None) -> Window:
    rows = tuple(
        Row(k, wire_key("NSE_FNO", 50_000 + 2 * n), wire_key("NSE_FNO", 50_001 + 2 * n)) for n, k in enumerate(STRIKES)
    )
    return Window(underlying, EXPIRY, rows, STRIKES[2], "1", future)


def _quotes(prices: dict[int, float]) -> Callable[[int], Quote | None]:
    def quote(key: int) -> Quote | None:
        price = prices.get(key)
        return None if price is None else Quote(wire_key_proto(key), price, 0.0, 0.0, 0.0, 0, 0, 0)

    return quote


def _legs(window: Window, forward: float, *, calls: bool = True, puts: bool = True) -> dict[int, float]:
    """Option prices as the simulator prints them on `forward` (13% vol)."""
    years = chain_math.years_to_expiry(NOW, window.expiry)
    prices: dict[int, float] = {}
    for row in window.rows:
        if calls and row.call is not None:
            prices[row.call] = round(option_price(forward, row.strike, years, 0.13, RATE, True), 2)
        if puts and row.put is not None:
            prices[row.put] = round(option_price(forward, row.strike, years, 0.13, RATE, False), 2)
    return prices


def _live(key: int) -> str:
    return ""


def test_parity_is_the_forward_when_a_strike_is_priced_on_both_sides() -> None:
    window = _window(INDEX, FUTURE)
    forward = 25_950.0
    prices = {INDEX: 25_900.0, FUTURE: forward + 40.0, **_legs(window, forward)}
    update = chain_update(window, _quotes(prices), _live, NOW, RATE)
    assert update.forward_source == feed_pb2.FORWARD_SOURCE_PUT_CALL_PARITY
    assert abs(update.forward_price - forward) < 0.5  # not the future's price
    assert update.future == wire_key_proto(FUTURE)


def test_the_listed_future_is_the_forward_when_no_strike_has_both_legs() -> None:
    window = _window(INDEX, FUTURE)
    prices = {INDEX: 25_900.0, FUTURE: 25_987.5, **_legs(window, 25_950.0, puts=False)}
    update = chain_update(window, _quotes(prices), _live, NOW, RATE)
    assert update.forward_source == feed_pb2.FORWARD_SOURCE_LISTED_FUTURE
    assert update.forward_price == 25_987.5  # the future's price as it is: no carry
    assert update.future == wire_key_proto(FUTURE) and FUTURE in window.keys
    assert all(r.call.greeks_status == feed_pb2.GREEKS_STATUS_COMPUTED for r in update.rows)
    assert all(r.put.greeks_status == feed_pb2.GREEKS_STATUS_NO_PRICE for r in update.rows)


def test_the_spot_is_carried_when_neither_parity_nor_a_future_price_is_there() -> None:
    for future in (FUTURE, None):  # listed but not priced yet, or not listed (a weekly expiry)
        window = _window(INDEX, future)
        update = chain_update(window, _quotes({INDEX: 25_900.0}), _live, NOW, RATE)
        assert update.forward_source == feed_pb2.FORWARD_SOURCE_SPOT_CARRY
        assert update.forward_price == 25_900.0 * math.exp(RATE * update.years_to_expiry)
        assert update.HasField("future") == (future is not None)


def test_a_commodity_chain_does_not_carry_its_future_again() -> None:
    # CRUDEOIL's options exercise into the future that is also the chain's underlying.
    window = _window(CRUDE, CRUDE)
    assert window.keys.count(CRUDE) == 1
    prices = {CRUDE: 6_012.0, **_legs(window, 6_012.0, puts=False)}
    update = chain_update(window, _quotes(prices), _live, NOW, RATE)
    assert update.forward_source == feed_pb2.FORWARD_SOURCE_LISTED_FUTURE
    assert update.forward_price == 6_012.0 == update.underlying_price
    assert update.future == update.underlying


def test_a_stale_leg_says_why() -> None:
    window = _window(INDEX, FUTURE)
    down = window.rows[1].call
    assert down is not None
    reasons = {down: NOT_SUBSCRIBED}
    update = chain_update(window, _quotes({INDEX: 25_900.0}), lambda k: reasons.get(k, ""), NOW, RATE)
    legs = [leg for row in update.rows for leg in (row.call, row.put)]
    stale = [leg for leg in legs if leg.stale]
    assert [leg.key for leg in stale] == [wire_key_proto(down)] and stale[0].stale_reason == "not subscribed upstream"
    assert all(leg.stale_reason == "" for leg in legs if not leg.stale)


def test_an_outage_as_a_stale_reason_names_the_shard_and_since_when() -> None:
    since = datetime(2026, 11, 20, 9, 31, 2, tzinfo=IST).timestamp()
    lost = Outage(feed_pb2.UPSTREAM_CAUSE_RECONNECTING, "broker connection lost (closed); reconnecting", 0, since)
    assert stale_reason(lost, 2) == "shard 2: broker connection lost (closed); reconnecting, since 09:31:02 IST"
    away = unreachable(0, "connection refused", since)
    assert stale_reason(away, 0) == "shard 0 unreachable (connection refused), since 09:31:02 IST"


# -- the listed future and stale legs, through the real services ---------------------------------


async def _first_update(stub: feed_pb2_grpc.GatewayServiceStub, who: Any, **fields: Any) -> feed_pb2.OptionChainUpdate:
    stream = stub.StreamOptionChain(feed_pb2.StreamOptionChainRequest(**fields), metadata=who)
    update = (await stream.read()).update
    stream.cancel()
    return update


async def test_a_monthly_chain_names_its_future_and_a_weekly_one_none(feed: FeedUnderTest) -> None:
    dan = await feed.subscription.user("dan")
    channel = grpc.aio.insecure_channel(feed.gateway.app.address)
    async with channel:
        stub = feed_pb2_grpc.GatewayServiceStub(channel)
        monthly = await _first_update(stub, dan, underlying_symbol="NIFTY", strikes_each_side=2)
        # NIFTY's nearest expiry is its monthly one: the index future of that day is listed.
        assert monthly.expiry_date == NIFTY_MONTHLY and monthly.future == wire_key_proto(FUTURE)
        weekly = await _first_update(stub, dan, underlying_symbol="NIFTY", expiry_date=NIFTY_NEXT_WEEKLY)
        assert weekly.expiry_date == NIFTY_NEXT_WEEKLY and not weekly.HasField("future")
        # The monthly chain's watchlist item subscribes the future too, so the chain has its price.
        listed = await feed.subscription.stub.ListWatchlistItems(
            spb.ListWatchlistItemsRequest(include_instruments=True), metadata=dan
        )
        held = {i.expiry_date: list(i.instruments) for i in listed.watchlist_items}
        assert wire_key_proto(FUTURE) in held[NIFTY_MONTHLY] and wire_key_proto(FUTURE) not in held[NIFTY_NEXT_WEEKLY]


def _legs_of(update: feed_pb2.OptionChainUpdate) -> list[feed_pb2.ChainOption]:
    return [leg for row in update.rows for leg in (row.call, row.put)]


def _reliance_chain(channel: grpc.aio.Channel, user: tuple[tuple[str, str], ...]) -> Any:
    """RELIANCE's chain, 2 strikes each side, every 50 ms: no Tier B plan holds RELIANCE here,
    so nothing but the stream's own watchlist item keeps its options subscribed."""
    request = feed_pb2.StreamOptionChainRequest(
        underlying_symbol="RELIANCE", strikes_each_side=2, update_interval=Duration(nanos=50_000_000)
    )
    return feed_pb2_grpc.GatewayServiceStub(channel).StreamOptionChain(request, metadata=user)


async def _read_until(
    stream: Any, done: Callable[[feed_pb2.OptionChainUpdate], bool], what: str
) -> feed_pb2.OptionChainUpdate:
    async def read() -> feed_pb2.OptionChainUpdate:
        while not done(update := (await stream.read()).update):
            pass
        return update

    try:
        return await asyncio.wait_for(read(), 20)
    except TimeoutError:
        raise AssertionError(f"no chain update with {what}") from None


async def test_legs_of_a_removed_chain_item_are_stale_not_subscribed_upstream(feed: FeedUnderTest) -> None:
    erin = await feed.subscription.user("erin")
    async with grpc.aio.insecure_channel(feed.gateway.app.address) as channel:
        stream = _reliance_chain(channel, erin)
        # Right after the stream opens, legs may not be subscribed yet: wait until they all are.
        live = await _read_until(
            stream, lambda u: all(not leg.stale for leg in _legs_of(u)), "every leg subscribed upstream"
        )
        assert all(leg.stale_reason == "" for leg in _legs_of(live))
        [item] = (
            await feed.subscription.stub.ListWatchlistItems(spb.ListWatchlistItemsRequest(), metadata=erin)
        ).watchlist_items
        await feed.subscription.stub.RemoveWatchlistItem(
            spb.RemoveWatchlistItemRequest(item_id=item.item_id), metadata=erin
        )
        gone = await _read_until(stream, lambda u: all(leg.stale for leg in _legs_of(u)), "every leg stale")
        assert {leg.stale_reason for leg in _legs_of(gone)} == {"not subscribed upstream"}
        stream.cancel()


async def test_legs_on_an_unreachable_shard_are_stale_with_the_outage_s_reason(feed: FeedUnderTest) -> None:
    fay = await feed.subscription.user("fay")
    async with grpc.aio.insecure_channel(feed.gateway.app.address) as channel:
        stream = _reliance_chain(channel, fay)
        await _read_until(stream, lambda u: all(not leg.stale for leg in _legs_of(u)), "every leg live")
        await feed.shards[0].app.stop(0)
        down = await _read_until(stream, lambda u: all(leg.stale for leg in _legs_of(u)), "every leg stale")
        reasons = {leg.stale_reason for leg in _legs_of(down)}
        assert len(reasons) == 1, reasons
        [reason] = reasons
        assert reason.startswith("shard 0 unreachable") and reason.endswith(" IST"), reason
        stream.cancel()
