"""Tier A: watchlist items, each a unit that owns the underlying and its option window."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.db import Pool
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.common.keys import Key
from services.subscription.ledger import Ledger
from services.subscription.model import OWNER_UNIT, Budget, Eviction
from services.subscription.resolver import UnitResolver
from services.subscription.sql import Row


@dataclass(frozen=True)
class Quota:
    max_items: int
    max_instruments: int


@dataclass(frozen=True)
class AddOutcome:
    item: Row
    created: bool
    evictions: list[Eviction]
    instruments: list[Key]


class Watchlists:
    def __init__(self, pool: Pool, budget: Budget, resolver: UnitResolver, quota: Quota) -> None:
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
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            item = await ledger.find_item(user_id, unit.symbol, unit.expiry, underlying_only)
            if item is not None and item["state"] == "ACTIVE":
                await ledger.touch([item["item_id"]])
                return AddOutcome(item, False, [], await ledger.owner_keys(OWNER_UNIT, str(item["item_id"])))
            items, held = await ledger.user_quota(user_id, item["item_id"] if item else 0)
            if items + 1 > self._quota.max_items:
                raise ResourceExhausted(
                    f"watchlist of {user_id!r} is full: {items} of {self._quota.max_items} items; remove one first"
                )
            if held + len(instruments) > self._quota.max_instruments:
                raise ResourceExhausted(
                    f"adding {unit.symbol} needs {len(instruments)} instruments; {user_id!r} holds {held} "
                    f"of a {self._quota.max_instruments}-instrument quota"
                )
            item = await ledger.save_item(
                user_id, unit, mode, underlying_only=underlying_only, item_id=item["item_id"] if item else None
            )
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
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            item = await ledger.item(item_number)
            if item is None or item["user_id"] != user_id:
                raise NotFound(f"watchlist of {user_id!r} has no item {item_id!r}; ListWatchlistItems shows its items")
            keys = await ledger.owner_keys(OWNER_UNIT, str(item_number))
            released = await ledger.release(
                OWNER_UNIT, str(item_number), reason=f"watchlist remove by {user_id}", user_id=user_id
            )
            await ledger.delete_items([item_number])
            ledger.event(user_id, "removed", item_number, removed=keys)
        return released

    async def record_usage(self, user_id: str, item_ids: list[int]) -> int:
        """Marks the user's ACTIVE units among `item_ids` used now, and only those; returns how
        many of `item_ids` they are."""
        async with Ledger.unlocked(self._pool, self._budget) as ledger:
            touched = await ledger.touch(item_ids, user_id)
        return sum(1 for i in item_ids if i in touched)

    async def touch_holding(self, user_id: str, keys: list[Key]) -> int:
        async with Ledger.unlocked(self._pool, self._budget) as ledger:
            return await ledger.touch_holding(user_id, keys)

    async def instruments_of(self, item_ids: list[int]) -> dict[int, list[Key]]:
        async with Ledger.unlocked(self._pool, self._budget) as ledger:
            return await ledger.unit_instruments(item_ids)

    # Last: below it, `list` in this class means the method.
    async def list(self, user_id: str | None, state: str | None, offset: int, limit: int) -> tuple[list[Row], int]:
        async with Ledger.unlocked(self._pool, self._budget) as ledger:
            items, total = await ledger.list_items(user_id, state, offset, limit)
            # Reading a unit is using it, for LRU.
            await ledger.touch([i["item_id"] for i in items if i["state"] == "ACTIVE"])
        return items, total


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
