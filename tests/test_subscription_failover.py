"""Failover between connections (issue 13 §3): shards report their broker connection through
ReportShardHealth; placement avoids down shards; the upkeep moves a shard's instruments,
make-before-break, once it has been down past the failover time; audit entries say why.
On the real subscription service and Postgres, and once end to end with real shards."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from dataserver.subscription.v1 import subscription_pb2 as pb
from prometheus_client import REGISTRY

from services.common.config import ConfigError, Settings, load_settings
from services.common.keys import key_from_proto
from services.feed import shard_server
from services.subscription.admin import Admin
from services.subscription.model import Budget
from tests.feed_fixtures import eventually, running_feed
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription
from tests.test_simulator import http
from tests.test_subscription_capacity import add
from tests.test_subscription_watchlists import expect, invariants

KICKED = "broker disconnect 805: too many connections"
Key = tuple[str, int]


async def report(
    service: SubscriptionUnderTest,
    shard: int,
    connected: bool,
    reason: str = KICKED,
    *,
    down_since: datetime | None = None,
) -> pb.ReportShardHealthResponse:
    request = pb.ReportShardHealthRequest(
        shard_id=shard, shard_epoch=f"test-{shard}", connected=connected, reason="" if connected else reason
    )
    if not connected:
        request.down_since.FromDatetime(down_since or datetime.now(UTC))
    return await service.stub.ReportShardHealth(request, metadata=service.admin)


async def loads(service: SubscriptionUnderTest) -> dict[int, int]:
    rows = await service.rows("SELECT shard_id, count(*) AS n FROM subscriptions GROUP BY 1 ORDER BY 1")
    return {r["shard_id"]: r["n"] for r in rows}


async def on_shard(service: SubscriptionUnderTest, shard: int) -> set[Key]:
    rows = await service.rows("SELECT exchange_segment, security_id FROM subscriptions WHERE shard_id = %s", shard)
    return {(r["exchange_segment"], r["security_id"]) for r in rows}


async def moving(service: SubscriptionUnderTest) -> int:
    return int(
        (await service.rows("SELECT count(*) AS n FROM subscriptions WHERE moving_to_shard IS NOT NULL"))[0]["n"]
    )


async def settled(service: SubscriptionUnderTest) -> bool:
    return await moving(service) == 0


async def status(service: SubscriptionUnderTest) -> pb.GetSubscriptionStatusResponse:
    return await service.stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), metadata=service.admin)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def subscription(database_url: str, masters_dir: Path, **settings: Any) -> AsyncIterator[SubscriptionUnderTest]:
    defaults = {
        "feed_connections": 3,
        "feed_instruments_per_connection": 100,
        "feed_failover_seconds": 3600.0,
        "move_settle_seconds": 1.0,
    }
    async with running_subscription(database_url, masters_dir, **{**defaults, **settings}) as service:
        yield service


@asynccontextmanager
async def recording(service: SubscriptionUnderTest, shards: range) -> AsyncIterator[list[tuple[int, str, Key]]]:
    """Every shard's assignment stream, read in the background: (shard, "add"/"remove", key)
    in the order they arrive, after each stream's snapshot."""
    seen: list[tuple[int, str, Key]] = []
    started: list[int] = []

    async def follow(shard: int) -> None:
        stream = service.stub.WatchAssignments(pb.WatchAssignmentsRequest(shard_id=shard), metadata=service.admin)
        async for message in stream:
            if message.kind == pb.ASSIGNMENT_MESSAGE_KIND_SNAPSHOT:
                started.append(shard)
            seen.extend((shard, "add", key_from_proto(a.key)) for a in message.added)
            seen.extend((shard, "remove", key_from_proto(k)) for k in message.removed)

    tasks = [asyncio.create_task(follow(s)) for s in shards]
    try:
        await eventually(lambda: len(started) == len(shards), what="every stream's snapshot")
        yield seen
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task


def made_before_broken(seen: list[tuple[int, str, Key]], source: int) -> Callable[[Key], bool]:
    def check(key: Key) -> bool:
        order = [(shard, kind) for shard, kind, k in seen if k == key]
        adds = [i for i, (shard, kind) in enumerate(order) if kind == "add" and shard != source]
        removes = [i for i, (shard, kind) in enumerate(order) if kind == "remove" and shard == source]
        return bool(adds and removes and adds[0] < removes[0])

    return check


async def test_new_instruments_avoid_a_down_shard(database_url: str, masters_dir: Path) -> None:
    async with subscription(database_url, masters_dir) as service:
        reply = await report(service, 1, False)
        assert reply.report_interval.ToTimedelta() == timedelta(seconds=service.settings.shard_health_report_seconds)
        await add(service, "alice", "RELIANCE", strikes_each_side=2)  # 12 instruments
        assert set(await loads(service)) == {0, 2}
        shards = (await status(service)).shards
        assert [s.connected for s in shards] == [True, False, True]  # 0 and 2 never reported: up
        assert shards[1].down_reason == KICKED and shards[1].HasField("down_since")
        assert not shards[0].HasField("down_since") and not shards[0].down_reason
        # Back up: the least-loaded shard takes the next instruments again.
        await report(service, 1, True)
        await add(service, "bob", "SBIN", strikes_each_side=2)
        assert (await loads(service)).get(1, 0) > 0
        assert all(s.connected for s in (await status(service)).shards)
        await invariants(service)


async def test_a_full_pool_places_on_a_down_shard_rather_than_refuse(database_url: str, masters_dir: Path) -> None:
    async with subscription(database_url, masters_dir, feed_connections=2, feed_instruments_per_connection=30) as svc:
        await report(svc, 1, False)
        # 44 (21 strikes x CE/PE, the stock, the expiry's future): more than shard 0 holds.
        reply = await add(svc, "alice", "RELIANCE", strikes_each_side=10)
        assert reply.watchlist_item.state == pb.WATCHLIST_ITEM_STATE_ACTIVE
        assert await loads(svc) == {0: 30, 1: 14}
        await invariants(svc)


async def test_a_shard_down_past_the_failover_time_moves_make_before_break(
    database_url: str, masters_dir: Path
) -> None:
    async with subscription(database_url, masters_dir, feed_failover_seconds=1.0) as service:
        await add(service, "alice", "RELIANCE", strikes_each_side=10)  # 44 over 3 shards
        leaving = await on_shard(service, 1)
        assert leaving
        before = metric("subscription_shard_moves_total", reason="failover")
        async with recording(service, range(3)) as seen:
            await report(service, 1, False)
            await eventually(
                lambda: all(made_before_broken(seen, 1)(k) for k in leaving), timeout=15, what="every move finished"
            )
        assert await on_shard(service, 1) == set() and await moving(service) == 0
        assert metric("subscription_shard_moves_total", reason="failover") - before == len(leaving)
        entries = (
            await service.stub.ListAuditEntries(
                pb.ListAuditEntriesRequest(action=pb.AUDIT_ACTION_MOVE, page_size=1000), metadata=service.admin
            )
        ).audit_entries
        started = [e for e in entries if e.from_shard_id == 1 and e.reason.startswith("failover: ")]
        assert len(started) == len(leaving)
        assert all("shard 1 down since " in e.reason and e.reason.endswith(f"({KICKED})") for e in started)
        shard = (await status(service)).shards[1]
        assert shard.instrument_count == 0 and not shard.connected
        await invariants(service)


async def test_without_room_they_stay_and_rebalance_evens_out_after(database_url: str, masters_dir: Path) -> None:
    async with subscription(
        database_url,
        masters_dir,
        feed_connections=2,
        feed_instruments_per_connection=30,
        feed_failover_seconds=0.5,
        move_settle_seconds=0.3,
    ) as service:
        await add(service, "alice", "RELIANCE", strikes_each_side=10)  # 44: 22 + 22
        assert await loads(service) == {0: 22, 1: 22}
        await report(service, 1, False)
        # Shard 0 has room for 8; the other 14 stay on shard 1, reported stale to terminals.
        await eventually(
            lambda: metric("subscription_failover_stranded_instruments") == 14, timeout=15, what="14 left without room"
        )
        await eventually(lambda: settled(service), what="the moves finishing")
        assert await loads(service) == {0: 30, 1: 14}
        # Back up: nothing is forced back, but an admin rebalance evens the shards out.
        await report(service, 1, True)
        assert await loads(service) == {0: 30, 1: 14}
        moved = await service.stub.Rebalance(pb.RebalanceRequest(), metadata=service.admin)
        assert moved.spread_before == 16 and moved.spread_after <= 1
        await invariants(service)


async def test_a_shard_back_up_is_refilled_by_the_automatic_rebalance(database_url: str, masters_dir: Path) -> None:
    async with subscription(database_url, masters_dir, feed_connections=2, feed_rebalance_spread=4) as service:
        await report(service, 1, False)  # e.g. still connecting when the preload placed Tier B
        await add(service, "alice", "RELIANCE", strikes_each_side=10)  # 44, all on shard 0
        assert await loads(service) == {0: 44}
        await report(service, 1, True)
        await eventually(lambda: settled(service), what="the moves finishing")

        async def even() -> bool:
            counts = await loads(service)
            return await settled(service) and abs(counts.get(0, 0) - counts.get(1, 0)) <= 4

        await eventually(even, timeout=15, what="the shards evened out")
        entries = (
            await service.stub.ListAuditEntries(
                pb.ListAuditEntriesRequest(action=pb.AUDIT_ACTION_MOVE, page_size=1000), metadata=service.admin
            )
        ).audit_entries
        assert {e.reason for e in entries} == {
            "automatic rebalance (spread over 4, every shard up): spread 44 -> 0",
            "target shard subscribed; source released",  # each move's end
        }
        await invariants(service)


async def test_a_shard_that_stops_reporting_counts_as_down(database_url: str, masters_dir: Path) -> None:
    async with subscription(database_url, masters_dir, shard_health_report_seconds=0.2) as service:
        reply = await report(service, 2, True)
        assert reply.report_interval.ToTimedelta() == timedelta(seconds=0.2)
        # Three intervals without a report: its process is gone.
        shard = await eventually(lambda: _down(service, 2), timeout=10, what="a quiet shard counted as down")
        assert shard.down_reason.startswith("no report since ") and shard.HasField("down_since")
        await add(service, "alice", "RELIANCE", strikes_each_side=2)
        assert set(await loads(service)) == {0, 1}


async def _down(service: SubscriptionUnderTest, shard: int) -> pb.ShardUsage | None:
    usage = (await status(service)).shards[shard]
    return None if usage.connected else usage


async def test_bad_reports_are_refused(database_url: str, masters_dir: Path) -> None:
    async with subscription(database_url, masters_dir) as service:
        for shard in (3, -1):
            details = await expect(
                service.stub.ReportShardHealth(
                    pb.ReportShardHealthRequest(shard_id=shard, shard_epoch="e"), metadata=service.admin
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "accepted 0..2" in details
        details = await expect(
            service.stub.ReportShardHealth(pb.ReportShardHealthRequest(shard_id=0), metadata=service.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "shard_epoch" in details
        await expect(
            service.stub.ReportShardHealth(
                pb.ReportShardHealthRequest(shard_id=0, shard_epoch="e"), metadata=await service.user("mallory")
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert await service.rows("SELECT * FROM shard_health") == []


async def test_a_real_shard_kicked_with_805_is_avoided_then_failed_over(database_url: str, masters_dir: Path) -> None:
    """Shard process → ReportShardHealth → Postgres → placement and failover, end to end."""
    async with running_feed(
        database_url,
        masters_dir,
        shards=2,
        subscription={"shard_health_report_seconds": 0.5, "feed_failover_seconds": 2.0},
        feed_kicked_backoff_seconds=120.0,  # stays down for the whole test
    ) as feed:
        service = feed.subscription
        up = "SELECT shard_id FROM shard_health WHERE connected ORDER BY 1"
        await eventually(lambda: _ids(service, up, [0, 1]), what="both shards reporting connected", timeout=15)
        await add(service, "alice", "RELIANCE", strikes_each_side=2)  # 12 over both shards
        kicked = await on_shard(service, 1)
        assert kicked
        await eventually(
            lambda: _connection_holding(feed, kicked), what="shard 1's subscriptions on the broker", timeout=15
        )
        connection = _connection_holding(feed, kicked)
        assert connection is not None
        code, _ = await http(
            feed.simulator.control_port, "POST", f"/connections/{connection}/disconnect", {"reason": 805}
        )
        assert code == 200
        down = "SELECT shard_id FROM shard_health WHERE NOT connected AND reason LIKE '%805%'"
        await eventually(lambda: _ids(service, down, [1]), what="shard 1 reported down with 805", timeout=15)
        usage = (await status(service)).shards[1]
        assert not usage.connected and usage.down_reason == KICKED
        reply = await add(service, "bob", "SBIN", strikes_each_side=2)
        assert not {key_from_proto(k) for k in reply.watchlist_item.instruments} & await on_shard(service, 1)
        # Past the failover time its instruments move to shard 0, which subscribes them.
        await eventually(lambda: _all_on_shard_0(service), what="shard 1 emptied", timeout=20)
        await eventually(lambda: feed.subscriptions_on_broker() == [24], what="shard 0 holding all 24", timeout=15)


async def _ids(service: SubscriptionUnderTest, query: str, expected: list[int]) -> bool:
    return [r["shard_id"] for r in await service.rows(query)] == expected


def _connection_holding(feed: Any, keys: set[Key]) -> int | None:
    for connection in feed.simulator.connections():
        if {(segment, security_id) for segment, security_id, _ in connection.subscriptions} == keys:
            return int(connection.id)
    return None


async def _all_on_shard_0(service: SubscriptionUnderTest) -> bool:
    return await loads(service) == {0: 24} and await moving(service) == 0


async def test_a_shard_keeps_running_while_its_reports_fail() -> None:
    """No subscription service and no broker: reports fail and are retried; the shard stays up."""
    settings = dataclasses.replace(
        Settings(), subscription_addr="127.0.0.1:1", feed_url="ws://127.0.0.1:1", feed_max_backoff_seconds=0.2
    )
    shard = shard_server.create_server(settings)
    async with shard.app:
        await eventually(lambda: shard.health.reports_failed >= 2, what="two failed reports", timeout=15)
        assert shard.app.failure is None and not shard.app.stopping.is_set()


def test_failover_settings_are_checked_at_start_up() -> None:
    assert load_settings({}).feed_failover_seconds == 20.0
    assert load_settings({"FEED_FAILOVER_SECONDS": "5", "SHARD_HEALTH_REPORT_SECONDS": "1"}).feed_failover_seconds == 5
    with pytest.raises(ConfigError, match="FEED_FAILOVER_SECONDS"):
        load_settings({"FEED_FAILOVER_SECONDS": "-1"})
    with pytest.raises(ConfigError, match="SHARD_HEALTH_REPORT_SECONDS"):
        load_settings({"SHARD_HEALTH_REPORT_SECONDS": "0"})


async def test_concurrent_failover_passes_move_each_instrument_once(database_url: str, masters_dir: Path) -> None:
    """Replicas run the pass side by side; the ledger lock makes them take turns."""
    # Its own upkeep neither fails over nor finishes moves while the test looks.
    async with subscription(database_url, masters_dir, move_settle_seconds=60.0) as service:
        await add(service, "alice", "RELIANCE", strikes_each_side=10)
        leaving = await on_shard(service, 1)
        await report(service, 1, False)
        budget = Budget(service.settings.feed_connections, service.settings.feed_instruments_per_connection)
        replicas = [Admin(service.pool, budget, move_settle_seconds=60.0, failover_seconds=0.0) for _ in range(4)]
        started = await asyncio.gather(*(admin.fail_over() for admin in replicas))
        assert sum(started) == len(leaving) and await moving(service) == len(leaving)
        entries = await service.rows("SELECT count(*) AS n FROM subscription_log WHERE reason LIKE 'failover: %'")
        assert entries[0]["n"] == len(leaving)
        await invariants(service)
