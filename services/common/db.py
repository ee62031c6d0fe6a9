"""The Postgres connection pool every service opens explicitly at start-up.

While Postgres is unreachable, a call fails fast instead of waiting for the pool: a
connection is checked before it is handed out (a dead one is never used), waiting for one
lasts at most the acquire timeout, and the caller gets UNAVAILABLE (the interceptor maps
`database_down`'s exceptions). The pool reconnects by itself when the server returns.
"""

from __future__ import annotations

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.common.config import Settings
from services.common.embedded_pg import start_embedded_postgres

# Every service's pool: autocommit connections whose rows are dicts.
Pool = AsyncConnectionPool[AsyncConnection[DictRow]]

# A reconnection attempt backs off exponentially until it gives up after this long; the next
# request for a connection starts a new one. Short, so that after a long outage the pool does
# not wait out a long back-off before trying again.
RECONNECT_SECONDS = 10.0
OPEN_TIMEOUT_SECONDS = 30.0


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL when set; otherwise the embedded server under the data folder."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_postgres(settings.data_dir)


async def open_pool(
    conninfo: str,
    *,
    max_size: int = 10,
    name: str = "dataserver",
    acquire_timeout: float = Settings.db_acquire_timeout_seconds,
    connect_timeout: int = Settings.db_connect_timeout_seconds,
) -> Pool:
    """Waits for the first connection at start-up (Postgres may still be starting); afterwards
    a connection is awaited for at most `acquire_timeout` seconds."""
    pool: Pool = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": connect_timeout},
        timeout=acquire_timeout,
        check=AsyncConnectionPool.check_connection,
        reconnect_timeout=RECONNECT_SECONDS,
    )
    await pool.open(wait=True, timeout=OPEN_TIMEOUT_SECONDS)
    return pool


def database_down(error: BaseException) -> bool:
    """Whether `error` means the database cannot be reached (rather than refusing a statement):
    no connection in time, or one lost or refused. A transaction rolled back by a conflict
    (serialization, deadlock) is also an OperationalError, but the database is up."""
    if isinstance(error, PoolTimeout):
        return True
    return isinstance(error, psycopg.OperationalError) and not isinstance(error, psycopg.errors.TransactionRollback)
