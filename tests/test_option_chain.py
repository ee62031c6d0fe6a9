"""StreamOptionChain on the simulator: the chain joins the caller's watchlist, updates carry
live prices with Black-76 IV and greeks on a forward from put-call parity, and the stream
leaves nothing attached at the gateway once it ends."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from datetime import datetime
from datetime import time as dtime
from pathlib import Path

import grpc
import pytest_asyncio
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as spb
from google.protobuf.duration_pb2 import Duration

from services.common.market_calendar import IST
from services.feed.gateway import chain_math
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.registry_fixtures import TRADING_DATE


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
