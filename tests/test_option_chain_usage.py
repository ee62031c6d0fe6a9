"""A watched option chain is in use: while its stream is open, the gateway keeps the chain's
watchlist item recent in the LRU order (as a followed watchlist's items are), so a full
budget evicts what nobody watches first, never the chain on a trader's screen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest_asyncio
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as spb

from tests.feed_fixtures import FeedUnderTest, eventually, running_feed


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir) as running:
        running.gateway.servicer.chain_touch_seconds = 0.1
        yield running


async def _last_used(feed: FeedUnderTest, user_id: str) -> dict[str, datetime]:
    """Read from the table: listing the items through the service would itself use them."""
    rows = await feed.subscription.rows(
        "SELECT symbol, last_used_at FROM watchlist_items WHERE user_id = %s AND state = 'ACTIVE'", user_id
    )
    return {r["symbol"]: r["last_used_at"] for r in rows}


async def test_a_watched_chain_stays_recent_and_an_unwatched_item_does_not(feed: FeedUnderTest) -> None:
    dana = await feed.subscription.user("dana")
    await feed.subscription.stub.AddWatchlistItem(spb.AddWatchlistItemRequest(symbol="SBIN"), metadata=dana)
    async with grpc.aio.insecure_channel(feed.gateway.app.address) as channel:
        stream = feed_pb2_grpc.GatewayServiceStub(channel).StreamOptionChain(
            feed_pb2.StreamOptionChainRequest(underlying_symbol="RELIANCE", strikes_each_side=2), metadata=dana
        )
        await stream.read()
        opened = await _last_used(feed, "dana")

        async def touched() -> bool:
            return (await _last_used(feed, "dana"))["RELIANCE"] > opened["RELIANCE"]

        await eventually(touched, timeout=20, what="the watched chain's item used again")
        now = await _last_used(feed, "dana")
        assert now["SBIN"] == opened["SBIN"]  # nobody watches SBIN
        assert now["RELIANCE"] > now["SBIN"]
        stream.cancel()
