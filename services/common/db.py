"""The Postgres connection pool every service opens explicitly at start-up."""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from services.common.config import Settings
from services.common.embedded_pg import start_embedded_postgres

# Every service's pool: autocommit connections whose rows are dicts.
Pool = AsyncConnectionPool[AsyncConnection[DictRow]]


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL when set; otherwise the embedded server under the data folder."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_postgres(settings.data_dir)


async def open_pool(conninfo: str, *, max_size: int = 10, name: str = "dataserver") -> Pool:
    pool: Pool = AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        kwargs={"autocommit": True, "row_factory": dict_row},
    )
    await pool.open(wait=True, timeout=30)
    return pool
