"""The job-run records in Postgres: the one owner of runs.sql.

A run holds its job's lock (a transaction-level advisory lock, so a replica that dies
releases it with its connection) for its whole length; its record is written on other
connections, so every replica sees a run as soon as it starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from services.common.db import Pool
from services.common.sqlfiles import load_queries

QUERIES = load_queries("services.scheduler", "runs.sql")

Row = dict[str, Any]


def advisory_key(name: str) -> int:
    """A Postgres advisory lock key: the first 8 bytes of the name's SHA-256, signed."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def job_lock_key(job: str) -> int:
    """A per-job advisory lock key, readable in pg_locks through its hash of the name."""
    return advisory_key(f"dataserver.scheduler.job.{job}")


@dataclass(frozen=True)
class RunFilter:
    job: str = ""
    outcome: str = ""
    trigger: str = ""
    trading_date: date | None = None


class JobRuns:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(QUERIES[name], params)
            return list(await cursor.fetchall()) if cursor.description else []

    async def _row(self, name: str, params: Mapping[str, Any]) -> Row | None:
        rows = await self._rows(name, params)
        return rows[0] if rows else None

    @asynccontextmanager
    async def exclusive(self, job: str) -> AsyncIterator[bool]:
        """Holds the job's lock while the block runs; yields False (holding nothing) when a
        run of the job is in progress elsewhere."""
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(QUERIES["lock_job"], {"lock_key": job_lock_key(job)})
            row = await cursor.fetchone()
            yield bool(row and row["locked"])

    async def abandon_running(self, job: str, now: datetime) -> None:
        await self._rows("abandon_running", {"job": job, "now": now})

    async def start(
        self, job: str, trading_date: date | None, trigger: str, now: datetime, replica: str, actor: str
    ) -> Row | None:
        """The new run, or None when a scheduled run of the job has claimed this date."""
        return await self._row(
            "start_run",
            {
                "job": job,
                "trading_date": trading_date,
                "trigger": trigger,
                "now": now,
                "replica": replica,
                "actor": actor,
            },
        )

    async def finish(self, run_id: int, outcome: str, now: datetime, counts: Mapping[str, int], error: str) -> Row:
        row = await self._row(
            "finish_run",
            {"run_id": run_id, "outcome": outcome, "now": now, "counts": json.dumps(dict(counts)), "error": error},
        )
        assert row is not None, f"run {run_id} vanished while running"
        return row

    async def last_runs(self, jobs: Sequence[str]) -> dict[str, Row]:
        rows = await self._rows("last_runs", {"jobs": list(jobs)})
        return {row["job_name"]: row for row in rows}

    async def page(self, where: RunFilter, before: int, limit: int) -> list[Row]:
        """Runs matching `where` with ids below `before` (0: from the newest), newest first."""
        return await self._rows(
            "list_runs",
            {
                "job": where.job,
                "outcome": where.outcome,
                "trigger": where.trigger,
                "trading_date": where.trading_date,
                "before": before,
                "limit": limit,
            },
        )

    async def prune_undated(self, before: datetime) -> None:
        await self._rows("prune_undated", {"before": before})
