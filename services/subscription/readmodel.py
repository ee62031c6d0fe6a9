"""The read model: the one owner of reports.sql, behind the status and listing views and the
streams. It only reads, and takes the ledger's lock only shared, for a shard snapshot whose
rows and change version must agree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from services.common.db import Pool
from services.common.keys import Key
from services.subscription import sql
from services.subscription.model import LOCK_KEY
from services.subscription.shard_health import ShardHealth, read_health
from services.subscription.sql import Params, Row, key_columns

QUERIES = sql.load("reports.sql")


@dataclass(frozen=True)
class StatusRows:
    shards: list[Row]  # shard_id, n, a, b, incoming
    moving_out: list[Row]  # shard_id, n
    owners: list[Row]  # owner_kind, n
    health: ShardHealth
    users: list[Row]  # user_id, active, evicted, instruments
    user_count: int
    evictions: int


class ReadModel:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _rows(self, name: str, params: Params = None) -> list[Row]:
        async with self._pool.connection() as conn:
            return await sql.rows(conn, QUERIES[name], params)

    async def _count(self, conn: AsyncConnection[Any], name: str, params: Params = None) -> int:
        row = await sql.row(conn, QUERIES[name], params)
        return int(row["n"]) if row else 0

    async def status(self, *, connections: int, users_shown: int, evictions_since: datetime) -> StatusRows:
        async with self._pool.connection() as conn:
            return StatusRows(
                shards=await sql.rows(conn, QUERIES["shard_usage"]),
                moving_out=await sql.rows(conn, QUERIES["moving_out"]),
                owners=await sql.rows(conn, QUERIES["owner_counts"]),
                health=await read_health(conn, connections),
                users=await sql.rows(conn, QUERIES["user_usage"], {"limit": users_shown}),
                user_count=await self._count(conn, "user_count"),
                evictions=await self._count(conn, "evictions_since", {"since": evictions_since}),
            )

    async def tier_loads(self) -> dict[str, int]:
        """Instruments subscribed per tier (A, B), moves in flight counted once."""
        return {row["tier"]: int(row["n"]) for row in await self._rows("tier_usage")}

    async def last_event_id(self) -> int:
        """The last watchlist event's id: it changes whenever any user's items do."""
        row = (await self._rows("last_event_id"))[0]
        return int(row["event_id"])

    async def user_instruments(self) -> list[int]:
        """The instruments each user's active items hold, one figure per user, unordered."""
        return [int(row["n"]) for row in await self._rows("user_instruments")]

    async def subscriptions(
        self, *, tier: str | None, shard_id: int | None, user_id: str | None, offset: int, limit: int
    ) -> tuple[list[Row], int]:
        """One page of subscriptions in key order, and how many match in all."""
        scope = {"tier": tier, "shard_id": shard_id, "user_id": user_id}
        async with self._pool.connection() as conn:
            rows = await sql.rows(conn, QUERIES["list_subscriptions"], {**scope, "limit": limit, "offset": offset})
            return rows, await self._count(conn, "count_subscriptions", scope)

    async def subscription(self, key: Key) -> Row | None:
        rows = await self._rows("get_subscription", {"segment": key[0], "security_id": key[1]})
        return rows[0] if rows else None

    async def owners_of(self, keys: Sequence[Key]) -> list[Row]:
        return await self._rows("owners_of", key_columns(keys)) if keys else []

    async def audit(self, filters: dict[str, Any]) -> list[Row]:
        return await self._rows("audit_entries", filters)

    async def shard_snapshot(self, shard_id: int) -> tuple[int, list[Row]]:
        """What the shard holds (moves in flight included), and the change version it is at."""
        async with self._pool.connection() as conn, conn.transaction():
            # Shared lock: no writer is mid-transaction, so rows and version agree.
            await sql.run(conn, QUERIES["lock_subscriptions_shared"], {"lock_key": LOCK_KEY})
            rows = await sql.rows(conn, QUERIES["shard_snapshot"], {"shard_id": shard_id})
            version = await sql.row(conn, QUERIES["last_change_version"])
        return int(version["version"]) if version else 0, rows

    async def shard_changes(self, shard_id: int, after: int, limit: int) -> list[Row]:
        return await self._rows("shard_changes", {"shard_id": shard_id, "after": after, "limit": limit})

    async def watchlist_snapshot(self, user_id: str | None) -> tuple[int, list[Row]]:
        """The last event id, then the items of the user (None: of everyone): events after that
        id may already show in the items, none before it is missing from them."""
        async with self._pool.connection() as conn:
            last = await sql.row(conn, QUERIES["last_event_id"])
            items = await sql.rows(conn, QUERIES["watchlist_items"], {"user_id": user_id})
        return int(last["event_id"]) if last else 0, items

    async def events_after(self, after: int, user_id: str | None, limit: int) -> list[tuple[Row, Row | None]]:
        """Events after `after`, each with its item as it is now (None once deleted)."""
        async with self._pool.connection() as conn:
            events = await sql.rows(conn, QUERIES["events_after"], {"after": after, "user_id": user_id, "limit": limit})
            ids = sorted({e["item_id"] for e in events})
            items = await sql.rows(conn, QUERIES["items_by_id"], {"item_ids": ids}) if ids else []
        by_id = {i["item_id"]: i for i in items}
        return [(e, by_id.get(e["item_id"])) for e in events]
