"""No self-inflicted 805: a shard closes its socket, and makes sure it is gone, before it
opens the next; the simulator frees a silenced connection's slot when its client closes the
socket and keeps a silent-but-open one counted, as Dhan does. So reconnecting a silenced
connection never pushes the account past its five connections and kicks a healthy shard."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2
from dataserver.subscription.v1 import subscription_pb2
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from services.common.config import Settings
from services.common.keys import key_proto
from services.feed.shard.broker import BrokerConnection
from services.feed.shard.cache import Ingest, LastValues
from services.feed.shard.runtime import ShardRuntime
from simulator import Simulator, SimulatorSettings
from simulator.catalog import Catalog
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.test_subscription_capacity import add

CLIENT = "1000000005"

# --- the shard's side ------------------------------------------------------------------


class _Sockets:
    """A WebSocket server that only reads, and notes every socket's opening and its client's
    closing in the order its event loop sees them."""

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.opened = 0
        self.most_open = 0

    def connection_class(self) -> type[ServerConnection]:
        sockets = self

        class Noted(ServerConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sockets.open.add(id(self))
                sockets.opened += 1
                sockets.most_open = max(sockets.most_open, len(sockets.open))
                super().connection_made(transport)

            def eof_received(self) -> None:
                sockets.open.discard(id(self))
                super().eof_received()

            def connection_lost(self, exc: Exception | None) -> None:
                sockets.open.discard(id(self))
                super().connection_lost(exc)

        return Noted


async def _read_all(ws: ServerConnection) -> None:
    async for _ in ws:
        pass


@asynccontextmanager
async def _running_shard(url: str, **settings: Any) -> AsyncIterator[ShardRuntime]:
    """A shard runtime on its own (no subscription service: its assignment is given)."""
    shard_settings = dataclasses.replace(
        Settings(), shard_id=0, feed_url=url, feed_market_hours_only=False, feed_coalesce_seconds=0.01, **settings
    )
    tasks: list[asyncio.Task[None]] = []

    def spawn(coroutine: Any, name: str) -> asyncio.Task[None]:
        tasks.append(asyncio.create_task(coroutine, name=name))
        return tasks[-1]

    # Nothing listens there: the assignment stream retries in the background, unused.
    async with grpc.aio.insecure_channel("127.0.0.1:9") as nowhere:
        runtime = ShardRuntime(shard_settings, nowhere)
        runtime.apply_assignment(
            subscription_pb2.WatchAssignmentsResponse(
                kind=subscription_pb2.ASSIGNMENT_MESSAGE_KIND_SNAPSHOT,
                assignments=[
                    subscription_pb2.Assignment(key=key_proto(("NSE_EQ", 2885)), mode=common_pb2.FEED_MODE_FULL)
                ],
                version=1,
            )
        )
        runtime.start(spawn)
        try:
            yield runtime
        finally:
            await runtime.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_reconnect_closes_the_old_socket_before_it_opens_the_new_one() -> None:
    sockets = _Sockets()
    async with serve(
        _read_all, "127.0.0.1", 0, create_connection=sockets.connection_class(), ping_interval=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        # The server never sends a packet: the watchdog reconnects again and again.
        async with _running_shard(
            f"ws://127.0.0.1:{port}", feed_watchdog_seconds=0.3, feed_max_backoff_seconds=0.2
        ) as shard:
            await eventually(lambda: sockets.opened >= 4, timeout=20, what="three watchdog reconnects")
            assert shard.reconnect_count >= 3
        assert sockets.most_open == 1, "a new socket opened while the old one was still open"


async def test_a_close_the_peer_does_not_read_is_aborted_after_the_grace() -> None:
    """A graceful close waits for queued data to leave; a peer that stopped reading never
    takes it, so the socket is aborted after the grace rather than left open."""
    reading_stopped = asyncio.Event()

    async def stop_reading(ws: ServerConnection) -> None:
        ws.transport.pause_reading()
        reading_stopped.set()
        await ws.wait_closed()

    async with serve(stop_reading, "127.0.0.1", 0, ping_interval=None, close_timeout=0.5) as server:
        port = server.sockets[0].getsockname()[1]
        connection = BrokerConnection(Ingest(LastValues(), lambda reason: None), lambda blob, count: None, 0.3)
        await connection.open(f"ws://127.0.0.1:{port}/")
        await asyncio.wait_for(reading_stopped.wait(), 5)
        assert connection.transport is not None
        connection.send_text("x" * (64 << 20))  # more than the socket buffers of both ends hold
        connection.close()
        assert not connection.disconnected.is_set()
        assert connection.transport.underlying_transport.get_write_buffer_size() > 0, "the close has data to send"
        await asyncio.wait_for(connection.disconnected.wait(), 10)
        assert connection.transport.underlying_transport.is_closing()


# --- the simulator's side --------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(masters_dir: Path) -> Catalog:
    return Catalog.generated(masters_dir, seed=7, scale="small")


@asynccontextmanager
async def _simulator(catalog: Catalog) -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorSettings(port=0, control_port=0, seed=1, close_timeout=1.0), catalog=catalog)
    await sim.start()
    try:
        yield sim
    finally:
        await asyncio.wait_for(sim.stop(), 10)


async def _connect(stack: AsyncExitStack, sim: Simulator) -> ClientConnection:
    count = len(sim.connections())
    client = await stack.enter_async_context(connect(sim.url(client_id=CLIENT), ping_interval=None, close_timeout=1))
    await eventually(lambda: len(sim.connections()) > count, what="the connection registered")
    return client


def _disconnects(sim: Simulator) -> dict[str, int]:
    sent: dict[str, int] = sim.health()["disconnects_sent"]
    return sent


async def test_a_silenced_connection_stays_counted_while_its_client_keeps_it_open(catalog: Catalog) -> None:
    async with _simulator(catalog) as sim, AsyncExitStack() as stack:
        for _ in range(5):
            await _connect(stack, sim)
        ids = [c.id for c in sim.connections()]
        sim.silence(ids[2])
        await stack.enter_async_context(connect(sim.url(client_id=CLIENT), ping_interval=None, close_timeout=1))
        # Six sockets of one client id: the oldest is kicked; the silent one still counts.
        await eventually(lambda: _disconnects(sim) == {"805": 1}, what="the oldest kicked with 805")
        await eventually(lambda: len(sim.connections()) == 5, what="five connections left")
        assert ids[0] not in {c.id for c in sim.connections()} and ids[2] in {c.id for c in sim.connections()}


async def test_a_client_closing_a_silenced_socket_frees_its_slot(catalog: Catalog) -> None:
    async with _simulator(catalog) as sim, AsyncExitStack() as stack:
        clients = [await _connect(stack, sim) for _ in range(5)]
        ids = [c.id for c in sim.connections()]
        sim.silence(ids[2])
        info = sim.connection(ids[2])
        assert info is not None and info.state == "silenced"
        clients[2].transport.close()  # what a shard's watchdog does: the socket, no close frame
        await eventually(lambda: ids[2] not in {c.id for c in sim.connections()}, what="the slot freed")
        await _connect(stack, sim)
        assert _disconnects(sim) == {}
        assert [c.id for c in sim.connections()][:4] == ids[:2] + ids[3:]


# --- the whole feed --------------------------------------------------------------------


def _shard_of_connection(feed: FeedUnderTest, conn_id: int) -> int:
    info = feed.simulator.connection(conn_id)
    assert info is not None
    keys = {(segment, security_id) for segment, security_id, _ in info.subscriptions}
    [shard] = [i for i, s in enumerate(feed.shards) if set(s.runtime.actual) == keys]
    return shard


async def test_silencing_one_of_five_connections_kicks_no_other(database_url: str, masters_dir: Path) -> None:
    # The shards' watchdog is short in running_feed (1.5 s) and the instruments spread over
    # all five shards (least loaded first).
    async with running_feed(database_url, masters_dir, shards=5) as feed:
        await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)  # 12 instruments
        await add(feed.subscription, "bob", "SBIN", strikes_each_side=2)
        await eventually(
            lambda: len(feed.subscriptions_on_broker()) == 5 and sum(feed.subscriptions_on_broker()) == 24,
            what="five connections with every subscription",
        )
        before = {c.id: _shard_of_connection(feed, c.id) for c in feed.simulator.connections()}
        victim = max(before)  # not the oldest, which a sixth connection would kick
        shard = feed.shards[before[victim]].runtime
        feed.simulator.silence(victim)

        def reconnected() -> bool:
            live = {c.id for c in feed.simulator.connections()}
            return victim not in live and len(live) == 5 and shard.state == feed_pb2.CONNECTION_STATE_CONNECTED

        await eventually(reconnected, timeout=20, what="the silenced shard reconnected")
        packets = shard.ingest.counters.packets
        await eventually(lambda: shard.ingest.counters.packets > packets + 10, what="the silenced shard's data back")
        assert _disconnects(feed.simulator) == {}, "no connection was sent a disconnect packet"
        live = {c.id for c in feed.simulator.connections()}
        assert set(before) - live == {victim} and shard.reconnect_count >= 1
        for conn_id, index in before.items():
            if conn_id != victim:
                other = feed.shards[index].runtime
                assert other.reconnect_count == 0 and other.last_disconnect_code == 0
