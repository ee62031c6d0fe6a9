"""The feed's metrics on real shards, the gateway and the simulator: ticks in and out, time to
first tick, reconnects by reason, stale instruments by cause at the gateway, and a stuck
terminal stream's lag."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio
from dataserver.feed.v1 import feed_pb2
from prometheus_client import REGISTRY

from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.test_feed_gateway import open_stream, subscribed_keys
from tests.test_feed_observability import SMALL_WINDOW
from tests.test_subscription_capacity import add


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir) as running:
        yield running


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_first_ticks_ticks_in_reconnects_and_stale_instruments(feed: FeedUnderTest) -> None:
    first_ticks = sample("feed_shard_first_tick_seconds_count", shard="0")
    packets = sample("feed_shard_packets_total", shard="0")
    kicked = sample("feed_shard_reconnects_total", shard="0", reason="807")
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)  # the stock, 10 options, the future
    await eventually(lambda: feed.subscriptions_on_broker() == [12], what="subscriptions")
    # Each instrument's first packet is timed once.
    await eventually(
        lambda: sample("feed_shard_first_tick_seconds_count", shard="0") == first_ticks + 12,
        what="twelve first ticks timed",
    )
    assert sample("feed_shard_first_tick_seconds_sum", shard="0") > 0
    await eventually(lambda: sample("feed_shard_packets_total", shard="0") > packets + 12, what="ticks in")
    assert sample("feed_shard_awaiting_first_tick_instruments", shard="0") == 0
    assert sample("feed_gateway_stale_instruments", reason="stopped") == 0

    # 807: the shard stops until a new token; the gateway counts its instruments stale as stopped.
    feed.simulator.disconnect("all", 807)
    shard = feed.shards[0].runtime
    await eventually(lambda: shard.state == feed_pb2.CONNECTION_STATE_STOPPED, what="stopped")
    assert sample("feed_shard_reconnects_total", shard="0", reason="807") == kicked + 1
    assert sample("feed_shard_connected", shard="0") == 0
    await eventually(
        lambda: sample("feed_gateway_stale_instruments", reason="stopped") == 12, what="twelve stale, stopped"
    )
    assert sample("feed_gateway_stale_instruments", reason="reconnecting") == 0


async def test_a_stream_that_stops_reading_shows_its_lag(feed: FeedUnderTest) -> None:
    sent = sample("feed_gateway_ticks_sent_total")
    await add(feed.subscription, "alice", "SBIN", strikes_each_side=10)
    keys = await subscribed_keys(feed, "alice")
    async with grpc.aio.insecure_channel(feed.gateway.app.address, options=SMALL_WINDOW) as channel:
        stream, _seen, _terminal = await open_stream(feed, channel, keys)
        await eventually(lambda: sample("feed_gateway_ticks_sent_total") > sent, what="ticks out")
        # Not reading from here on: the oldest pending tick ages, and the stream counts as slow.
        await eventually(
            lambda: sample("feed_gateway_stream_lag_seconds_max") > 2 and sample("feed_gateway_slow_streams") == 1,
            timeout=30,
            what="the stalled stream's lag",
        )
        stream.cancel()
    await eventually(lambda: sample("feed_gateway_slow_streams") == 0, what="no slow stream once it is gone")
    assert sample("feed_gateway_stream_lag_seconds_max") == 0
