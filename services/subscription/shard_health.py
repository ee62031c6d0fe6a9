"""Feed shards' broker-connection health: the one owner of health.sql (the shards' reports as
stored), and the rule that reads them (`assess`, pure).

A shard is down when its last report says its connection is not up, or when it has reported
before but not for three report intervals (it went quiet: its process is gone or cut off).
A shard that never reported counts as up, so a service run without shards places as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from services.common.db import Pool
from services.common.market_calendar import IST
from services.subscription import sql

log = logging.getLogger(__name__)

QUERIES = sql.load("health.sql")
QUIET_INTERVALS = 3


@dataclass(frozen=True)
class ShardReport:
    """A shard's last report, as stored."""

    shard_id: int
    connected: bool
    down_since: datetime | None
    reason: str
    reported_at: datetime
    interval_seconds: float


@dataclass(frozen=True)
class ShardCondition:
    shard_id: int
    connected: bool
    down_since: datetime | None = None  # set unless connected
    reason: str = ""  # unless connected: why, as the shard said, or that it went quiet


@dataclass(frozen=True)
class ShardHealth:
    """Every shard's condition at `now` (the database's clock)."""

    shards: tuple[ShardCondition, ...]
    now: datetime

    @property
    def down(self) -> frozenset[int]:
        return frozenset(s.shard_id for s in self.shards if not s.connected)

    def down_longer_than(self, seconds: float) -> list[ShardCondition]:
        """Down shards whose outage has lasted `seconds` or more, longest first."""
        limit = self.now - timedelta(seconds=seconds)
        due = [s for s in self.shards if not s.connected and s.down_since is not None and s.down_since <= limit]
        return sorted(due, key=lambda s: (s.down_since, s.shard_id))


def _clock(at: datetime) -> str:
    return f"{at.astimezone(IST):%H:%M:%S} IST"


def assess(reports: Sequence[ShardReport], connections: int, now: datetime) -> ShardHealth:
    """Each shard's condition by its last report (pure: the rule is tested on its own)."""
    by_shard = {r.shard_id: r for r in reports}
    shards = []
    for shard_id in range(connections):
        report = by_shard.get(shard_id)
        if report is None:
            shards.append(ShardCondition(shard_id, True))
            continue
        quiet = now - report.reported_at > timedelta(seconds=QUIET_INTERVALS * report.interval_seconds)
        if quiet:
            since = report.reported_at if report.connected else min(report.down_since or now, report.reported_at)
            reason = f"no report since {_clock(report.reported_at)}"
            if not report.connected:
                reason += f" (last: {report.reason})"
            shards.append(ShardCondition(shard_id, False, since, reason))
        elif report.connected:
            shards.append(ShardCondition(shard_id, True))
        else:
            shards.append(ShardCondition(shard_id, False, report.down_since or report.reported_at, report.reason))
    return ShardHealth(tuple(shards), now)


def describe(condition: ShardCondition) -> str:
    """For audit entries and logs, e.g. "shard 3 down since 09:31:02 IST (broker disconnect 805: ...)"."""
    since = f" since {_clock(condition.down_since)}" if condition.down_since else ""
    return f"shard {condition.shard_id} down{since} ({condition.reason or 'no reason given'})"


async def read_health(conn: AsyncConnection[Any], connections: int) -> ShardHealth:
    rows = await sql.rows(conn, QUERIES["shard_health"])
    reports = [
        ShardReport(
            r["shard_id"], r["connected"], r["down_since"], r["reason"], r["reported_at"], r["report_interval_seconds"]
        )
        for r in rows
        if r["shard_id"] is not None
    ]
    return assess(reports, connections, rows[0]["now"])


async def record_health(
    conn: AsyncConnection[Any],
    *,
    shard_id: int,
    epoch: str,
    connected: bool,
    down_since: datetime | None,
    reason: str,
    interval_seconds: float,
) -> None:
    """Stores a shard's report (replacing its last one); logs when its connection changes."""
    row = await sql.row(
        conn,
        QUERIES["record_shard_health"],
        {
            "shard_id": shard_id,
            "epoch": epoch,
            "connected": connected,
            "down_since": down_since,
            "reason": "" if connected else reason,
            "interval": interval_seconds,
        },
    )
    if row is not None and row["was_connected"] is not row["connected"]:
        fields = {"shard": shard_id, "shard_epoch": epoch}
        if connected:
            log.info("shard reports its broker connection up", extra=fields)
        else:
            log.warning(
                "shard reports its broker connection down",
                extra={**fields, "reason": reason, "down_since": row["down_since"].isoformat()},
            )


class HealthReports:
    """The shards' reports on the service's pool: ReportShardHealth stores them through this."""

    def __init__(self, pool: Pool, connections: int, interval_seconds: float) -> None:
        self._pool = pool
        self.connections = connections
        self.interval_seconds = interval_seconds

    async def record(
        self, shard_id: int, epoch: str, connected: bool, down_since: datetime | None, reason: str
    ) -> None:
        async with self._pool.connection() as conn:
            await record_health(
                conn,
                shard_id=shard_id,
                epoch=epoch,
                connected=connected,
                down_since=down_since,
                reason=reason,
                interval_seconds=self.interval_seconds,
            )
