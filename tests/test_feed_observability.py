"""What an operator sees of feed faults, on real shards, the gateway and the simulator: garbage
on the feed as a metric and a rate-limited warning, and a stalled terminal's conflation
counted while it is stalled."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from services.common.keys import proto_wire_key
from services.feed.shard.cache import BAD_LENGTH, TRUNCATED_HEADER, UNKNOWN_CODE
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.test_feed_gateway import behind_history, open_stream, subscribed_keys
from tests.test_subscription_capacity import add

# A terminal's channel with a small fixed HTTP/2 window, so a stream it stops reading stalls soon.
SMALL_WINDOW = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024))


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir) as running:
        yield running


def field(record: logging.LogRecord, name: str) -> Any:
    """A field the line carries (passed through `extra=`)."""
    return vars(record)[name]


def protocol_errors_metric(shard: str) -> float:
    kinds = (TRUNCATED_HEADER, BAD_LENGTH, UNKNOWN_CODE)
    samples = (
        REGISTRY.get_sample_value("feed_shard_protocol_errors_total", {"shard": shard, "kind": k}) for k in kinds
    )
    return sum(s or 0.0 for s in samples)


def conflated_metric() -> float:
    return REGISTRY.get_sample_value("feed_gateway_conflated_total") or 0.0


async def test_garbage_is_exported_and_logged_at_most_once_per_interval(
    feed: FeedUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.feed.shard.cache")
    shard = feed.shards[0].runtime
    shard.ingest.errors.interval = 2.0  # the shipped interval, shorter so the summary line comes soon
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)  # the stock, 10 options, the future
    await eventually(lambda: feed.subscriptions_on_broker() == [12], what="subscriptions")
    counted, exported = shard.ingest.counters.protocol_errors, protocol_errors_metric("0")

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "services.feed.shard.cache" and r.levelno == logging.WARNING]

    feed.simulator.garbage("all", size=37, count=5)  # each frame is at least one error
    await eventually(lambda: shard.ingest.counters.protocol_errors >= counted + 5, what="the errors counted")
    errors = shard.ingest.counters.protocol_errors - counted
    await eventually(lambda: protocol_errors_metric("0") - exported == errors, what="the metric rising with the count")
    [first] = await eventually(warnings, what="a warning line")
    assert field(first, "dropped") == 1 and field(first, "shard") == 0 and field(first, "last_error")
    # The rest of the burst: one line at the interval's end, with how many and the last error.
    await eventually(lambda: sum(field(r, "dropped") for r in warnings()) == errors, what="the burst's summary line")
    lines = warnings()
    assert len(lines) == 2 and lines[1].created - lines[0].created >= 2.0 - 0.05  # loop timers may fire a hair early
    assert field(lines[1], "last_error") == shard.ingest.counters.last_error


async def test_a_stalled_stream_shows_conflation_while_it_is_stalled(feed: FeedUnderTest) -> None:
    await add(feed.subscription, "alice", "SBIN", strikes_each_side=10)  # 43 instruments
    keys = await subscribed_keys(feed, "alice")
    # Every instrument has a value before the stream starts, so its snapshot numbers them all:
    # a gap can only be counted from a value the terminal saw.
    hub = feed.gateway.hub
    await eventually(
        lambda: all((i := hub.instruments.get(proto_wire_key(k))) and i.latest for k in keys),
        timeout=30,
        what="a value of every instrument at the gateway",
    )
    async with grpc.aio.insecure_channel(feed.gateway.app.address, options=SMALL_WINDOW) as channel:
        stream, seen, terminal = await open_stream(feed, channel, keys)
        assert len(seen) == len(keys), "the snapshot numbers every instrument"
        # What the stream counted while it was being opened (a RESTORED snapshot of a shard
        # still starting, say) is in the metric already.
        before, counted_before = conflated_metric(), terminal.conflated
        # Not reading from here on: once the transport's buffers are full, ticks pile up at the gateway.
        await eventually(
            behind_history(feed, terminal), timeout=30, what="the stalled stream falling behind the history"
        )
        stalled = await eventually(lambda: terminal.conflated, timeout=5, what="conflation counted while stalled")
        await eventually(lambda: terminal.conflated > stalled, timeout=5, what="the count rising while stalled")
        assert conflated_metric() - before >= terminal.conflated - counted_before

        # Reading again: the gaps the terminal sees add up to what was counted, nothing twice.
        gaps = 0

        async def caught_up() -> bool:
            nonlocal gaps
            message = await stream.read()
            # A snapshot (after an upstream RESTORED, say, when the shard was still starting) counts too.
            body = message.WhichOneof("body")
            for tick in (
                message.batch.ticks if body == "batch" else message.snapshot.ticks if body == "snapshot" else ()
            ):
                previous = seen.get(tick.key.security_id)
                gaps += tick.sequence - previous - 1 if previous is not None else 0
                seen[tick.key.security_id] = tick.sequence
            return gaps > 0 and gaps == terminal.conflated - counted_before

        await eventually(caught_up, timeout=20, what="the terminal's gaps matching the conflation counted")
        stream.cancel()
