"""A terminal stream ended by the client or by the server while the gateway is blocked
writing to it leaves nothing in the log: the RPC's own task closes the stream's generator,
in the RPC's context (before, the event loop's finaliser closed it in another context, and
the gateway logged "Task exception was never retrieved ... ValueError: <Token var=<ContextVar
name='request_id'> ...> was created in a different Context")."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc

from services.feed import gateway_server
from services.feed.gateway.terminals import Terminals
from tests.feed_fixtures import FeedUnderTest, eventually, gateway_settings, running_feed
from tests.test_feed_gateway import subscribed_keys
from tests.test_subscription_capacity import add

STREAMS = 6


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir) as running:
        await add(running.subscription, "alice", "SBIN", strikes_each_side=10)
        yield running


@contextmanager
def unhandled_errors() -> Iterator[list[dict[str, Any]]]:
    """What the event loop would log as unhandled ("Task exception was never retrieved")."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        yield reported
    finally:
        loop.set_exception_handler(previous)


async def _blocked_streams(feed: FeedUnderTest, address: str, terminals: Terminals) -> list[Any]:
    """STREAMS streams whose terminals read the snapshot and then stop, until the gateway is
    blocked writing to every one of them (each generator suspended at its `yield`)."""
    keys = await subscribed_keys(feed, "alice")
    channel = grpc.aio.insecure_channel(address)
    stub = feed_pb2_grpc.GatewayServiceStub(channel)
    calls = []
    for _ in range(STREAMS):
        call = stub.StreamTicks(
            feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=keys)),
            metadata=feed.subscription.admin,
        )
        await call.read()
        calls.append(call)

    def blocked() -> bool:
        # A stream blocked in a write has ticks pending and is not waiting for work.
        streams = list(terminals.streams)
        return len(streams) == STREAMS and all(s.pending and not s.waiting for s in streams)

    await eventually(blocked, timeout=60, what="the gateway blocked writing to every stream")
    return [channel, calls]


async def _settle() -> None:
    """Lets the finalisers of abandoned generators run, as they would in a long-lived process."""
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.05)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_streams_the_client_cancels_while_blocked_leave_no_error(
    feed: FeedUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with unhandled_errors() as reported:
        channel, calls = await _blocked_streams(feed, feed.gateway.app.address, feed.gateway.terminals)
        for call in calls:
            call.cancel()
        await eventually(lambda: not feed.gateway.terminals.streams, what="every stream closed")
        await channel.close()
        await _settle()
    assert reported == [] and _errors(caplog) == []


async def test_streams_a_stopping_server_cuts_while_blocked_leave_no_error(
    feed: FeedUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    gateway = gateway_server.create_server(gateway_settings(feed.subscription, feed.shards), feed.subscription.pool)
    with unhandled_errors() as reported:
        async with gateway.app:
            channel, _ = await _blocked_streams(feed, gateway.app.address, gateway.terminals)
        assert not gateway.terminals.streams
        await channel.close()
        await _settle()
    assert reported == [] and _errors(caplog) == []
