"""Applies the SQL files in `migrations/` in order, once each, recorded in a ledger.

Runs under a transaction-level advisory lock so replicas starting together do not race;
a released migration whose text changed is refused rather than silently skipped.

    python -m services.common.migrate      (uses DATABASE_URL or the embedded server)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# Any constant shared by all replicas; the ledger name's hash keeps it readable in pg_locks.
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"dataserver.schema_migrations").digest()[:8], "big", signed=True)

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str  # file name without .sql, e.g. "0001_initial"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def available_migrations() -> list[Migration]:
    folder = resources.files("services.common").joinpath("migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(f.name.removesuffix(".sql"), f.read_text()) for f in files]


async def migrate(conninfo: str) -> list[str]:
    """Applies pending migrations; returns the versions applied now."""
    applied_now: list[str] = []
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            await conn.execute(_LEDGER)
            cursor = await conn.execute("SELECT version, checksum FROM schema_migrations")
            ledger: dict[str, str] = dict(await cursor.fetchall())
            for migration in available_migrations():
                recorded = ledger.get(migration.version)
                if recorded is not None:
                    if recorded != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version} was edited after it was applied; "
                            "released migrations are immutable: add a new file instead"
                        )
                    continue
                await conn.execute(sql.SQL(migration.sql))  # a trusted file of ours, not a literal
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                    (migration.version, migration.checksum),
                )
                applied_now.append(migration.version)
    if applied_now:
        log.info("migrations applied", extra={"versions": applied_now})
    return applied_now


def main() -> None:
    from services.common.config import load_settings
    from services.common.db import resolve_database_url
    from services.common.jsonlog import configure_logging

    settings = load_settings()
    configure_logging("migrate", settings.log_level)
    applied = asyncio.run(migrate(resolve_database_url(settings)))
    log.info("schema up to date", extra={"applied": applied})


if __name__ == "__main__":
    main()
