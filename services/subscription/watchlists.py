"""Tier A: watchlist items, each a unit that owns the underlying and its option window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.subscription.ledger import QUERIES
from services.subscription.model import OWNER_UNIT, Budget, Eviction, Key, ResolvedUnit
from services.subscription.resolver import UnitResolver
from services.subscription.transactions import ledger_transaction


@dataclass(frozen=True)
class Quota:
    max_items: int
    max_instruments: int


@dataclass(frozen=True)
class AddOutcome:
    item: dict[str, Any]
    created: bool
    evictions: list[Eviction]
    instruments: list[Key]


def _item_fields(unit: ResolvedUnit, mode: str) -> dict[str, Any]:
    return {
        "strikes_each_side": unit.strikes_each_side,
        "feed_mode": mode,
        "underlying_segment": unit.underlying.key[0],
        "underlying_security_id": unit.underlying.key[1],
        "atm_strike": unit.atm_strike,
        "strike_step": unit.strike_step,
        "underlying_price": unit.underlying_price,
        "price_source": str(unit.price_source) if unit.price_source else None,
        "instrument_count": len(unit.instruments()),
    }


class Watchlists:
    def __init__(self, pool: AsyncConnectionPool, budget: Budget, resolver: UnitResolver, quota: Quota) -> None:
        self._pool = pool
        self._budget = budget
        self._resolver = resolver
        self._quota = quota

    async def add(
        self,
        user_id: str,
        actor: str,
        *,
        symbol: str,
        expiry: str,
        strikes_each_side: int,
        price_hint: float,
        underlying_only: bool,
        mode: str,
    ) -> AddOutcome:
        unit = await self._resolver.resolve(
            symbol,
            expiry=expiry,
            strikes_each_side=strikes_each_side,
            price_hint=price_hint,
            underlying_only=underlying_only,
        )
        instruments = unit.instruments()
        async with ledger_transaction(self._pool, self._budget, actor) as ledger:
            item = await ledger.fetch_one(
                "find_item",
                {
                    "user_id": user_id,
                    "symbol": unit.symbol,
                    "expiry_date": unit.expiry,
                    "underlying_only": underlying_only,
                },
            )
            if item is not None and item["state"] == "ACTIVE":
                await ledger.conn.execute(QUERIES["touch_items"], {"item_ids": [item["item_id"]]})
                keys = [
                    (r["exchange_segment"], r["security_id"])
                    for r in await ledger.fetch(
                        "owner_keys", {"owner_kind": OWNER_UNIT, "owner_id": str(item["item_id"])}
                    )
                ]
                return AddOutcome(item, False, [], keys)
            quota = await ledger.fetch_one(
                "user_quota", {"user_id": user_id, "exclude": item["item_id"] if item else 0}
            )
            assert quota is not None
            if quota["items"] + 1 > self._quota.max_items:
                raise ResourceExhausted(
                    f"watchlist of {user_id!r} is full: {quota['items']} of {self._quota.max_items} items; remove one first"
                )
            if quota["instruments"] + len(instruments) > self._quota.max_instruments:
                raise ResourceExhausted(
                    f"adding {unit.symbol} needs {len(instruments)} instruments; {user_id!r} holds {quota['instruments']} "
                    f"of a {self._quota.max_instruments}-instrument quota"
                )
            fields = _item_fields(unit, mode)
            if item is None:
                item = await ledger.fetch_one(
                    "insert_item",
                    {
                        **fields,
                        "user_id": user_id,
                        "symbol": unit.symbol,
                        "expiry_date": unit.expiry,
                        "underlying_only": underlying_only,
                    },
                )
            else:
                item = await ledger.fetch_one("reactivate_item", {**fields, "item_id": item["item_id"]})
            assert item is not None
            outcome = await ledger.acquire(
                OWNER_UNIT,
                str(item["item_id"]),
                instruments,
                mode,
                reason=f"watchlist add {unit.symbol} by {user_id}",
                user_id=user_id,
                protect_items=[item["item_id"]],
            )
            ledger.event(user_id, "added", item["item_id"], added=[i.key for i in instruments])
        return AddOutcome(item, True, outcome.evictions, [i.key for i in instruments])

    async def remove(self, user_id: str, actor: str, item_id: str) -> int:
        item_number = _item_number(item_id)
        async with ledger_transaction(self._pool, self._budget, actor) as ledger:
            item = await ledger.fetch_one("get_item", {"item_id": item_number})
            if item is None or item["user_id"] != user_id:
                raise NotFound(f"watchlist of {user_id!r} has no item {item_id!r}; ListWatchlistItems shows its items")
            keys = [
                (r["exchange_segment"], r["security_id"])
                for r in await ledger.fetch("owner_keys", {"owner_kind": OWNER_UNIT, "owner_id": str(item_number)})
            ]
            released = await ledger.release(
                OWNER_UNIT, str(item_number), reason=f"watchlist remove by {user_id}", user_id=user_id
            )
            await ledger.conn.execute(QUERIES["delete_item"], {"item_id": item_number})
            ledger.event(user_id, "removed", item_number, removed=keys)
        return released

    async def touch(self, item_ids: list[int]) -> None:
        if item_ids:
            async with self._pool.connection() as conn:
                await conn.execute(QUERIES["touch_items"], {"item_ids": item_ids})

    async def touch_holding(self, user_id: str, keys: list[Key]) -> int:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                QUERIES["touch_units_holding"],
                {"user_id": user_id, "segments": [k[0] for k in keys], "ids": [k[1] for k in keys]},
            )
            return cursor.rowcount

    async def list(
        self, user_id: str | None, state: str | None, offset: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                QUERIES["list_items"], {"user_id": user_id, "state": state, "limit": limit, "offset": offset}
            )
            items = await cursor.fetchall()
            cursor = await conn.execute(QUERIES["count_items"], {"user_id": user_id, "state": state})
            total = await cursor.fetchone()
            # Reading a unit is using it, for LRU.
            active = [i["item_id"] for i in items if i["state"] == "ACTIVE"]
            if active:
                await conn.execute(QUERIES["touch_items"], {"item_ids": active})
        return items, int(total["n"]) if total else 0  # type: ignore[index]

    async def instruments_of(self, item_ids: list[int]) -> dict[int, list[Key]]:
        result: dict[int, list[Key]] = {i: [] for i in item_ids}
        async with self._pool.connection() as conn:
            cursor = await conn.execute(QUERIES["unit_instruments"], {"owner_ids": [str(i) for i in item_ids]})
            for row in await cursor.fetchall():
                result[int(row["owner_id"])].append((row["exchange_segment"], row["security_id"]))
        return result


def _item_number(item_id: str) -> int:
    try:
        number = int(item_id)
    except ValueError:
        raise InvalidArgument(
            f"item_id {item_id!r} is malformed: expected the numeric id from ListWatchlistItems"
        ) from None
    if number <= 0:
        raise InvalidArgument(f"item_id {item_id!r} is malformed: expected a positive id")
    return number
