"""The subscription ledger: the one owner of the subscription SQL (queries.sql), run through
named methods on a connection nobody else sees.

`Ledger.transaction(pool, budget, actor)` is the only way to change who owns which
instrument: it takes the cross-replica lock, yields the ledger, then writes the journal and
commits (rolling back on error). `Ledger.unlocked(pool, budget)` serves what changes no
ownership: reads, LRU touches, pruning.

Invariants kept here, whatever the callers do:
- total subscribed <= budget capacity, and no shard above its per-connection limit
  (instruments being moved count on both shards);
- one row per instrument (the primary key), its ref count, tier and mode recomputed from its
  owners in the same transaction;
- Tier B is never evicted, and a Tier A unit is evicted whole or not at all;
- every change reaches the audit log and the affected shards' change log.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

from psycopg import AsyncConnection

from services.common.db import Pool
from services.common.errors import ResourceExhausted, Unavailable
from services.common.keys import Key
from services.subscription import sql
from services.subscription.journal import Journal
from services.subscription.metrics import EVICTIONS
from services.subscription.model import (
    LOCK_KEY,
    OWNER_TIER_B,
    OWNER_UNIT,
    AcquireOutcome,
    Budget,
    Eviction,
    Instrument,
    ResolvedUnit,
)
from services.subscription.placement import NoRoom, place
from services.subscription.shard_health import ShardHealth, read_health
from services.subscription.sql import Params, Row, key_columns

QUERIES = sql.load("queries.sql")
_LRU_BATCH = 32


def _keys(rows: list[Row]) -> list[Key]:
    return [(r["exchange_segment"], r["security_id"]) for r in rows]


def _window(unit: ResolvedUnit, instrument_count: int) -> dict[str, Any]:
    """The item columns a unit's (re-)resolution sets, but its price source."""
    return {
        "atm_strike": unit.atm_strike,
        "strike_step": unit.strike_step,
        "underlying_price": unit.underlying_price,
        "instrument_count": instrument_count,
    }


class Ledger:
    def __init__(self, conn: AsyncConnection[Any], budget: Budget, actor: str, *, locked: bool) -> None:
        self._conn = conn
        self._budget = budget
        self._locked = locked
        self._journal = Journal(actor)
        self._evicted: list[str] = []  # EVICT audits' reasons, counted in the metrics once committed

    @classmethod
    @asynccontextmanager
    async def transaction(cls, pool: Pool, budget: Budget, actor: str) -> AsyncIterator[Ledger]:
        """One serialised ledger transaction: locks, yields the ledger, writes its journal and
        commits; rolls back on error."""
        async with pool.connection() as conn:
            async with conn.transaction():
                ledger = cls(conn, budget, actor, locked=True)
                await ledger._run("lock_subscriptions", {"lock_key": LOCK_KEY})
                yield ledger
                await ledger._flush()
            ledger._count_evictions()

    @classmethod
    @asynccontextmanager
    async def unlocked(cls, pool: Pool, budget: Budget) -> AsyncIterator[Ledger]:
        """Outside the lock, each statement committing on its own: for what changes no ownership."""
        async with pool.connection() as conn:
            ledger = cls(conn, budget, "system", locked=False)
            yield ledger
            ledger._count_evictions()

    async def _rows(self, name: str, params: Params = None) -> list[Row]:
        return await sql.rows(self._conn, QUERIES[name], params)

    async def _row(self, name: str, params: Params = None) -> Row | None:
        return await sql.row(self._conn, QUERIES[name], params)

    async def _run(self, name: str, params: Params = None) -> int:
        return await sql.run(self._conn, QUERIES[name], params)

    def _require_lock(self) -> None:
        if not self._locked:
            raise RuntimeError("ownership changes only inside Ledger.transaction, which holds the lock")

    # -- capacity reads -------------------------------------------------------------------

    async def shard_loads(self) -> list[int]:
        loads = [0] * self._budget.connections
        for row in await self._rows("shard_loads"):
            if 0 <= row["shard_id"] < len(loads):
                loads[row["shard_id"]] += row["n"]
        return loads

    async def shard_health(self) -> ShardHealth:
        """Every shard's broker-connection condition, by the shards' reports."""
        return await read_health(self._conn, self._budget.connections)

    async def total(self) -> int:
        row = await self._row("total_subscribed")
        return int(row["n"]) if row else 0

    async def owner_keys(self, owner_kind: str, owner_id: str) -> list[Key]:
        return _keys(await self._rows("owner_keys", {"owner_kind": owner_kind, "owner_id": owner_id}))

    # -- owning ---------------------------------------------------------------------------

    async def acquire(
        self,
        owner_kind: str,
        owner_id: str,
        instruments: Sequence[Instrument],
        mode: str,
        *,
        reason: str,
        user_id: str | None = None,
        protect_items: Sequence[int] = (),
    ) -> AcquireOutcome:
        """Makes the owner hold every instrument, subscribing the ones nobody holds yet and
        evicting least recently used Tier A units when they do not fit."""
        self._require_lock()
        instruments = list({i.key: i for i in instruments}.values())
        keys = [i.key for i in instruments]
        tier = "B" if owner_kind == OWNER_TIER_B else "A"
        outcome = AcquireOutcome()
        existing = set(_keys(await self._rows("existing_subscriptions", key_columns(keys))))
        # Claim what is already subscribed first, so evictions below cannot drop it.
        await self._own(owner_kind, owner_id, [k for k in keys if k in existing], mode)
        new = [i for i in instruments if i.key not in existing]
        if new:
            await self._ensure_room(
                keys, len(new), protect_items, outcome, reason_kind="TIER_B_PLAN" if tier == "B" else "CAPACITY"
            )
            await self._subscribe(owner_kind, owner_id, new, mode, tier, reason=reason, user_id=user_id)
            outcome.subscribed = [i.key for i in new]
            await self._own(owner_kind, owner_id, outcome.subscribed, mode)
        await self._refresh(keys)
        return outcome

    async def _subscribe(
        self,
        owner_kind: str,
        owner_id: str,
        new: list[Instrument],
        mode: str,
        tier: str,
        *,
        reason: str,
        user_id: str | None,
    ) -> None:
        health = await self.shard_health()
        try:
            shards = place(await self.shard_loads(), self._budget.per_connection, len(new), health.down)
        except NoRoom as error:
            raise Unavailable(f"{error}; moves in flight hold the room, retry in a few seconds") from error
        await self._run(
            "insert_subscriptions",
            {
                **key_columns(i.key for i in new),
                "symbols": [i.trading_symbol for i in new],
                "modes": [mode] * len(new),
                "shards": shards,
                "tiers": [tier] * len(new),
            },
        )
        unit_id = int(owner_id) if owner_kind == OWNER_UNIT else None
        for instrument, shard in zip(new, shards, strict=True):
            self._journal.change([shard], instrument.key, mode, "add")
            self._journal.audit(
                "SUBSCRIBE",
                reason,
                tier=tier,
                key=instrument.key,
                unit_id=unit_id,
                user_id=user_id,
                to_shard=shard,
                details={"owner": f"{owner_kind}:{owner_id}", "mode": mode},
            )

    async def _own(self, owner_kind: str, owner_id: str, keys: Sequence[Key], mode: str) -> None:
        if keys:
            await self._run(
                "insert_owners",
                {**key_columns(keys), "modes": [mode] * len(keys), "owner_kind": owner_kind, "owner_id": owner_id},
            )

    async def release(
        self,
        owner_kind: str,
        owner_id: str,
        *,
        reason: str,
        keys: Sequence[Key] | None = None,
        user_id: str | None = None,
    ) -> int:
        """Drops the owner's hold (on `keys`, or on everything); returns how many instruments
        nobody holds any more and were unsubscribed."""
        self._require_lock()
        owner = {"owner_kind": owner_kind, "owner_id": owner_id}
        if keys is None:
            released = _keys(await self._rows("delete_owner", owner))
        else:
            released = _keys(await self._rows("delete_owner_keys", {**key_columns(keys), **owner}))
        if not released:
            return 0
        dropped = await self._rows("drop_unowned", key_columns(released))
        unit_id = int(owner_id) if owner_kind == OWNER_UNIT else None
        for row in dropped:
            key = (row["exchange_segment"], row["security_id"])
            self._journal.change([row["shard_id"], row["moving_to_shard"]], key, row["feed_mode"], "remove")
            self._journal.audit(
                "UNSUBSCRIBE",
                reason,
                tier=row["tier"],
                key=key,
                unit_id=unit_id,
                user_id=user_id,
                from_shard=row["shard_id"],
                details={"owner": f"{owner_kind}:{owner_id}"},
            )
        gone = set(_keys(dropped))
        await self._refresh([k for k in released if k not in gone])
        return len(dropped)

    async def _refresh(self, keys: Sequence[Key]) -> None:
        if not keys:
            return
        for row in await self._rows("refresh_from_owners", key_columns(keys)):
            if row["feed_mode"] != row["old_mode"]:
                key = (row["exchange_segment"], row["security_id"])
                self._journal.change([row["shard_id"], row["moving_to_shard"]], key, row["feed_mode"], "update")
                self._journal.audit(
                    "MODE_CHANGE",
                    f"mode {row['old_mode']} -> {row['feed_mode']}",
                    key=key,
                    details={"old_mode": row["old_mode"], "new_mode": row["feed_mode"]},
                )

    # -- capacity -------------------------------------------------------------------------

    async def _ensure_room(
        self, keys: Sequence[Key], needed: int, protect_items: Sequence[int], outcome: AcquireOutcome, reason_kind: str
    ) -> None:
        capacity = self._budget.capacity
        total = await self.total()
        if total + needed <= capacity:
            return
        # Evicting every Tier A unit would leave Tier B plus these instruments.
        tier_b_outside = await self._row("tier_b_count_outside", key_columns(keys))
        floor = (tier_b_outside["n"] if tier_b_outside else 0) + len(keys)
        if floor > capacity:
            raise ResourceExhausted(
                f"{len(keys)} instruments cannot fit: Tier B holds {floor - len(keys)} of the {capacity} capacity "
                f"({self._budget.connections} connections x {self._budget.per_connection}), leaving "
                f"{capacity - (floor - len(keys))} for Tier A"
            )
        protected = list(protect_items)
        while total + needed > capacity:
            candidates = await self._rows("lru_units", {"exclude": protected, "limit": _LRU_BATCH})
            if not candidates:
                raise ResourceExhausted(
                    f"no Tier A unit left to evict: {total} of {capacity} subscribed, {needed} more needed"
                )
            for unit in candidates:
                if total + needed <= capacity:
                    break
                protected.append(unit["item_id"])
                message = (
                    f"evicted as least recently used (last used {unit['last_used_at']:%Y-%m-%d %H:%M:%S} UTC) "
                    f"to make room for {needed} instruments; {total} of {capacity} were subscribed"
                )
                released = await self._evict_unit(unit, reason_kind, message)
                total -= released
                outcome.evictions.append(
                    Eviction(
                        unit["item_id"],
                        unit["user_id"],
                        unit["symbol"],
                        unit["expiry_date"],
                        reason_kind,
                        message,
                        released,
                        unit["last_used_at"],
                    )
                )

    async def _evict_unit(self, unit: Row, reason_kind: str, message: str) -> int:
        """Releases a whole Tier A unit and marks its watchlist item EVICTED."""
        item_id = int(unit["item_id"])
        keys = await self.owner_keys(OWNER_UNIT, str(item_id))
        released = await self.release(OWNER_UNIT, str(item_id), reason=message, user_id=unit["user_id"])
        await self.mark_evicted(item_id, reason_kind, message)
        self.audit(
            "EVICT",
            message,
            tier="A",
            unit_id=item_id,
            user_id=unit["user_id"],
            details={"reason": reason_kind, "symbol": unit["symbol"], "released": released},
        )
        self.event(unit["user_id"], "evicted", item_id, removed=keys)
        return released

    # -- watchlist items --------------------------------------------------------------------

    async def find_item(self, user_id: str, symbol: str, expiry: date | None, underlying_only: bool) -> Row | None:
        """The user's item for this unit, whatever its state, locked for this transaction."""
        return await self._row(
            "find_item",
            {"user_id": user_id, "symbol": symbol, "expiry_date": expiry, "underlying_only": underlying_only},
        )

    async def item(self, item_id: int) -> Row | None:
        return await self._row("get_item", {"item_id": item_id})

    async def save_item(
        self, user_id: str, unit: ResolvedUnit, mode: str, *, underlying_only: bool, item_id: int | None
    ) -> Row:
        """A new ACTIVE item for the unit, or the evicted item `item_id` made ACTIVE again."""
        fields = {
            **_window(unit, len(unit.instruments())),
            "price_source": str(unit.price_source) if unit.price_source else None,
            "strikes_each_side": unit.strikes_each_side,
            "feed_mode": mode,
            "underlying_segment": unit.underlying.key[0],
            "underlying_security_id": unit.underlying.key[1],
        }
        if item_id is None:
            identity = {"user_id": user_id, "symbol": unit.symbol, "expiry_date": unit.expiry}
            row = await self._row("insert_item", {**fields, **identity, "underlying_only": underlying_only})
        else:
            row = await self._row("reactivate_item", {**fields, "item_id": item_id})
        assert row is not None  # INSERT and UPDATE of a locked row both return it
        return row

    async def update_item_window(self, item_id: int, unit: ResolvedUnit, instrument_count: int) -> None:
        fields = {**_window(unit, instrument_count), "price_source": str(unit.price_source)}
        await self._run("update_item_window", {**fields, "item_id": item_id})

    async def user_quota(self, user_id: str, exclude_item: int) -> tuple[int, int]:
        """How many ACTIVE items the user holds, and their instruments, leaving one item out."""
        row = await self._row("user_quota", {"user_id": user_id, "exclude": exclude_item})
        return (row["items"], row["instruments"]) if row else (0, 0)

    async def touch(self, item_ids: Sequence[int], user_id: str | None = None) -> set[int]:
        """Marks these ACTIVE units (of `user_id`, when given) used now; returns those it found."""
        if not item_ids:
            return set()
        rows = await self._rows("touch_items", {"item_ids": list(item_ids), "user_id": user_id})
        return {r["item_id"] for r in rows}

    async def touch_holding(self, user_id: str, keys: Sequence[Key]) -> int:
        """Marks used now the user's ACTIVE units holding any of `keys`; returns how many."""
        return await self._run("touch_units_holding", {"user_id": user_id, **key_columns(keys)})

    async def mark_evicted(self, item_id: int, reason_kind: str, message: str) -> None:
        await self._run("mark_evicted", {"item_id": item_id, "reason": reason_kind, "message": message})

    async def delete_items(self, item_ids: Sequence[int]) -> None:
        if item_ids:
            await self._run("delete_items", {"item_ids": list(item_ids)})

    async def list_items(
        self, user_id: str | None, state: str | None, offset: int, limit: int
    ) -> tuple[list[Row], int]:
        """One page of items in id order, and how many there are in all."""
        scope = {"user_id": user_id, "state": state}
        items = await self._rows("list_items", {**scope, "limit": limit, "offset": offset})
        total = await self._row("count_items", scope)
        return items, int(total["n"]) if total else 0

    async def items(self, user_id: str | None, state: str | None) -> list[Row]:
        """Every item of the user (None: of everyone), in `state` (None: any), in id order."""
        return await self._rows("items_of", {"user_id": user_id, "state": state})

    async def unit_instruments(self, item_ids: Sequence[int]) -> dict[int, list[Key]]:
        result: dict[int, list[Key]] = {i: [] for i in item_ids}
        for row in await self._rows("unit_instruments", {"owner_ids": [str(i) for i in item_ids]}):
            result[int(row["owner_id"])].append((row["exchange_segment"], row["security_id"]))
        return result

    # -- Tier B -------------------------------------------------------------------------------

    async def tier_b_plan(self) -> Row | None:
        return await self._row("tier_b_plan")

    async def save_tier_b_plan(self, request: dict[str, Any]) -> None:
        await self._run("save_tier_b_plan", {"request": json.dumps(request)})

    async def tier_b_entries(self) -> list[Row]:
        return await self._rows("tier_b_entries")

    async def tier_b_entry(self, entry_id: str) -> Row | None:
        return await self._row("get_tier_b_entry", {"entry_id": entry_id})

    async def save_tier_b_entry(self, row: Row) -> None:
        await self._run("upsert_tier_b_entry", row)

    async def delete_tier_b_entry(self, entry_id: str) -> None:
        await self._run("delete_tier_b_entry", {"entry_id": entry_id})

    async def tier_b_count(self) -> int:
        """How many instruments Tier B holds."""
        row = await self._row("tier_b_count")
        return int(row["n"]) if row else 0

    # -- end of day -------------------------------------------------------------------------

    async def end_of_day_run(self, trading_date: date) -> dict[str, Any] | None:
        """The counts end of day recorded for `trading_date`, or None if it has not run."""
        row = await self._row("end_of_day_run", {"trading_date": trading_date})
        return row["counts"] if row else None

    async def record_end_of_day(self, trading_date: date, counts: dict[str, Any]) -> None:
        await self._run("record_end_of_day", {"trading_date": trading_date, "counts": json.dumps(counts)})

    # -- moves and upkeep ---------------------------------------------------------------------

    async def movable_on_shard(self, shard_id: int, limit: int) -> list[Row]:
        return await self._rows("movable_on_shard", {"shard_id": shard_id, "limit": limit})

    async def failover_candidates(self, shard_id: int, limit: int) -> list[Row]:
        """What a down shard holds that is not already moving: Tier B first, then the most
        recently used, since what terminals watch matters most."""
        return await self._rows("failover_candidates", {"shard_id": shard_id, "limit": limit})

    async def start_move(self, key: Key, mode: str, source: int, target: int, reason: str) -> None:
        """Subscribes `key` on the target shard too; `finish_move` drops it from the source."""
        self._require_lock()
        await self._run("start_move", {"target": target, "segment": key[0], "security_id": key[1]})
        self._journal.change([target], key, mode, "add")
        self._journal.audit("MOVE", reason, key=key, from_shard=source, to_shard=target, details={"phase": "started"})

    async def moves_due(self, settle_seconds: float) -> bool:
        row = await self._row("any_settled_moves", {"settle": settle_seconds})
        return bool(row and row["due"])

    async def settled_moves(self, settle_seconds: float) -> list[Row]:
        return await self._rows("settled_moves", {"settle": settle_seconds})

    async def finish_move(self, key: Key, mode: str, source: int, target: int) -> None:
        self._require_lock()
        await self._run("finish_move", {"segment": key[0], "security_id": key[1]})
        self._journal.change([source], key, mode, "remove")
        self._journal.audit(
            "MOVE",
            "target shard subscribed; source released",
            key=key,
            from_shard=source,
            to_shard=target,
            details={"phase": "finished"},
        )

    async def prune(self, keep_seconds: float) -> None:
        """Drops change-log rows and watchlist events older than `keep_seconds`."""
        await self._run("prune_changes", {"keep_seconds": keep_seconds})
        await self._run("prune_events", {"keep_seconds": keep_seconds})

    def _count_evictions(self) -> None:
        for reason in self._evicted:
            EVICTIONS.labels(reason).inc()
        self._evicted.clear()

    # -- journal ------------------------------------------------------------------------------

    def audit(self, action: str, reason: str, **fields: Any) -> None:
        self._journal.audit(action, reason, **fields)
        if action == "EVICT":
            self._evicted.append(str((fields.get("details") or {}).get("reason", "UNSPECIFIED")))

    def event(
        self, user_id: str, kind: str, item_id: int, *, added: Sequence[Key] = (), removed: Sequence[Key] = ()
    ) -> None:
        self._journal.event(user_id, kind, item_id, added=added, removed=removed)

    async def _flush(self) -> None:
        """Writes the audit rows, the shards' change log and the users' events, and queues the
        notifications that wake the streams when the transaction commits."""
        audit = self._journal.audit_columns()
        if audit:
            await self._run("insert_audit", audit)
        changes = self._journal.change_columns()
        if changes:
            await self._run("insert_changes", changes[0])
            await self._run("notify_assignments", {"payload": changes[1]})
        events = self._journal.events()
        if events:
            await self._run("insert_watchlist_events", events[0])
            await self._run("notify_watchlists", {"payload": events[1]})
        self._journal.clear()
