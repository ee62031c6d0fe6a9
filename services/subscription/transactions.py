"""One serialised ledger transaction per operation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg_pool import AsyncConnectionPool

from services.subscription.ledger import Ledger
from services.subscription.model import Budget


@asynccontextmanager
async def ledger_transaction(pool: AsyncConnectionPool, budget: Budget, actor: str) -> AsyncIterator[Ledger]:
    """Locks, yields the ledger, flushes its audit/changes/events, commits; rolls back on error."""
    async with pool.connection() as conn:
        async with conn.transaction():
            ledger = Ledger(conn, budget, actor)
            await ledger.lock()
            yield ledger
            await ledger.flush()
