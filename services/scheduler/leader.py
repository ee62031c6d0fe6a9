"""One leader among the scheduler replicas: the holder of a session-level Postgres advisory
lock on a connection of its own. A leader that dies loses its connection and so its lock;
a follower tries the lock every few seconds and takes over.

Leading decides only who fires schedules; exactly-once rests on the run records' unique key
and the per-job locks, so a leader that has lost its connection without noticing yet cannot
make a job run twice.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg.rows import DictRow, dict_row

from services.common.db import Pool
from services.common.sqlfiles import load_queries
from services.scheduler.metrics import LEADER
from services.scheduler.runs import advisory_key

log = logging.getLogger(__name__)

QUERIES = load_queries("services.scheduler", "leader.sql")
LOCK_KEY = advisory_key("dataserver.scheduler.leader")
_APPLICATION_PREFIX = "scheduler "
_PING_TIMEOUT_SECONDS = 5.0


class LeaderLock:
    def __init__(self, conninfo: str, replica: str) -> None:
        self._conninfo = conninfo
        self.replica = replica
        self._conn: psycopg.AsyncConnection[DictRow] | None = None
        self.is_leader = False

    async def refresh(self) -> bool:
        """Takes the lock if free, or checks that the connection holding it is alive."""
        leading = self.is_leader
        try:
            conn = await self._connection()
            if leading:
                await asyncio.wait_for(conn.execute(QUERIES["ping"]), _PING_TIMEOUT_SECONDS)
            else:
                cursor = await conn.execute(QUERIES["try_lock"], {"lock_key": LOCK_KEY})
                row = await cursor.fetchone()
                leading = bool(row and row["locked"])
        except (psycopg.Error, TimeoutError) as error:
            log.warning("leader lock connection lost", extra={"replica": self.replica, "error": str(error)})
            leading = False
            await self.close()
        self._set(leading)
        return leading

    def _set(self, leading: bool) -> None:
        if leading != self.is_leader:
            log.info("leading" if leading else "no longer leading", extra={"replica": self.replica})
            self.is_leader = leading
        LEADER.set(int(leading))

    async def _connection(self) -> psycopg.AsyncConnection[DictRow]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                row_factory=dict_row,
                application_name=_APPLICATION_PREFIX + self.replica,
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
            await self._conn.execute(QUERIES["keepalives"])
        return self._conn

    async def run(self, interval: float) -> None:
        """Tries or keeps the lock every `interval` seconds, until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Closes the connection, which releases the lock at once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        self._set(False)

    @staticmethod
    async def current_leader(pool: Pool) -> str:
        """The replica holding the lock in this database; empty when none does."""
        high, low = (LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF
        async with pool.connection() as conn:
            cursor = await conn.execute(QUERIES["leader"], {"high": high, "low": low})
            row = await cursor.fetchone()
        name = str(row["application_name"]) if row else ""
        return name.removeprefix(_APPLICATION_PREFIX)
