"""The subscription ledger: every change to who owns which instrument, inside one
transaction that holds the cross-replica lock.

Invariants kept here, whatever the callers do:
- total subscribed <= budget capacity, and no shard above its per-connection limit
  (instruments being moved count on both shards);
- one row per instrument (the primary key), its ref count, tier and mode recomputed from its
  owners in the same transaction;
- Tier B is never evicted, and a Tier A unit is evicted whole or not at all;
- every change reaches the audit log and the affected shards' change log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection

from services.common.errors import ResourceExhausted, Unavailable
from services.common.sqlfiles import load_queries
from services.subscription.model import (
    OWNER_TIER_B,
    OWNER_UNIT,
    AcquireOutcome,
    Budget,
    Eviction,
    Instrument,
    Key,
)
from services.subscription.placement import NoRoom, place

QUERIES = load_queries("services.subscription")
LOCK_KEY = int.from_bytes(hashlib.sha256(b"dataserver.subscriptions").digest()[:8], "big", signed=True)
_LRU_BATCH = 32


def _columns(keys: Iterable[Key]) -> dict[str, list[Any]]:
    keys = list(keys)
    return {"segments": [k[0] for k in keys], "ids": [k[1] for k in keys]}


@dataclass
class _Audit:
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def add(
        self,
        action: str,
        actor: str,
        reason: str,
        *,
        tier: str | None = None,
        key: Key | None = None,
        unit_id: int | None = None,
        user_id: str | None = None,
        from_shard: int | None = None,
        to_shard: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.rows.append(
            (
                action,
                actor,
                reason,
                tier,
                key[0] if key else None,
                key[1] if key else None,
                unit_id,
                user_id,
                from_shard,
                to_shard,
                json.dumps(details or {}),
            )
        )


class Ledger:
    """Opened with `async with Ledger.open(conn, ...)`-style use: call `lock()` first inside a
    transaction, then any operations, then `flush()` before commit."""

    def __init__(self, conn: AsyncConnection[Any], budget: Budget, actor: str) -> None:
        self.conn = conn
        self.budget = budget
        self.actor = actor
        self._audit = _Audit()
        self._changes: list[tuple[int, str, int, str, str]] = []
        self._events: list[dict[str, Any]] = []

    # -- reading --------------------------------------------------------------------------

    async def lock(self) -> None:
        await self.conn.execute(QUERIES["lock_subscriptions"], {"lock_key": LOCK_KEY})

    async def fetch(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        cursor = await self.conn.execute(QUERIES[name], params or {})
        return await cursor.fetchall()  # type: ignore[return-value]

    async def fetch_one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        cursor = await self.conn.execute(QUERIES[name], params or {})
        return await cursor.fetchone()  # type: ignore[return-value]

    async def shard_loads(self) -> list[int]:
        loads = [0] * self.budget.connections
        for row in await self.fetch("shard_loads"):
            if 0 <= row["shard_id"] < len(loads):
                loads[row["shard_id"]] += row["n"]
        return loads

    async def total(self) -> int:
        row = await self.fetch_one("total_subscribed")
        return int(row["n"]) if row else 0

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
        instruments = list({i.key: i for i in instruments}.values())
        keys = [i.key for i in instruments]
        tier = "B" if owner_kind == OWNER_TIER_B else "A"
        unit_id = int(owner_id) if owner_kind == OWNER_UNIT else None
        outcome = AcquireOutcome()
        existing = {
            (r["exchange_segment"], r["security_id"])
            for r in await self.fetch("existing_subscriptions", _columns(keys))
        }
        # Claim what is already subscribed first, so evictions below cannot drop it.
        await self._own(owner_kind, owner_id, [k for k in keys if k in existing], mode)
        new = [i for i in instruments if i.key not in existing]
        if new:
            await self._ensure_room(
                keys, len(new), protect_items, outcome, reason_kind="TIER_B_PLAN" if tier == "B" else "CAPACITY"
            )
        if new:
            try:
                shards = place(await self.shard_loads(), self.budget.per_connection, len(new))
            except NoRoom as error:
                raise Unavailable(f"{error}; moves in flight hold the room, retry in a few seconds") from error
            await self.conn.execute(
                QUERIES["insert_subscriptions"],
                {
                    **_columns(i.key for i in new),
                    "symbols": [i.trading_symbol for i in new],
                    "modes": [mode] * len(new),
                    "shards": shards,
                    "tiers": [tier] * len(new),
                },
            )
            for instrument, shard in zip(new, shards, strict=True):
                self._changes.append((shard, *instrument.key, mode, "add"))
                self._audit.add(
                    "SUBSCRIBE",
                    self.actor,
                    reason,
                    tier=tier,
                    key=instrument.key,
                    unit_id=unit_id,
                    user_id=user_id,
                    to_shard=shard,
                    details={"owner": f"{owner_kind}:{owner_id}", "mode": mode},
                )
            outcome.subscribed = [i.key for i in new]
            await self._own(owner_kind, owner_id, [i.key for i in new], mode)
        await self._refresh(keys)
        return outcome

    async def _own(self, owner_kind: str, owner_id: str, keys: Sequence[Key], mode: str) -> None:
        if keys:
            await self.conn.execute(
                QUERIES["insert_owners"],
                {**_columns(keys), "modes": [mode] * len(keys), "owner_kind": owner_kind, "owner_id": owner_id},
            )

    async def release(
        self,
        owner_kind: str,
        owner_id: str,
        *,
        reason: str,
        keys: Sequence[Key] | None = None,
        user_id: str | None = None,
        action: str = "UNSUBSCRIBE",
    ) -> int:
        """Drops the owner's hold (on `keys`, or on everything); returns how many instruments
        nobody holds any more and were unsubscribed."""
        if keys is None:
            rows = await self.fetch("delete_owner", {"owner_kind": owner_kind, "owner_id": owner_id})
        else:
            rows = await self.fetch(
                "delete_owner_keys", {**_columns(keys), "owner_kind": owner_kind, "owner_id": owner_id}
            )
        released = [(r["exchange_segment"], r["security_id"]) for r in rows]
        if not released:
            return 0
        dropped = await self.fetch("drop_unowned", _columns(released))
        unit_id = int(owner_id) if owner_kind == OWNER_UNIT else None
        for row in dropped:
            key = (row["exchange_segment"], row["security_id"])
            for shard in (row["shard_id"], row["moving_to_shard"]):
                if shard is not None:
                    self._changes.append((shard, *key, row["feed_mode"], "remove"))
            self._audit.add(
                action,
                self.actor,
                reason,
                tier=row["tier"],
                key=key,
                unit_id=unit_id,
                user_id=user_id,
                from_shard=row["shard_id"],
                details={"owner": f"{owner_kind}:{owner_id}"},
            )
        gone = {(r["exchange_segment"], r["security_id"]) for r in dropped}
        await self._refresh([k for k in released if k not in gone])
        return len(dropped)

    async def _refresh(self, keys: Sequence[Key]) -> None:
        if not keys:
            return
        for row in await self.fetch("refresh_from_owners", _columns(keys)):
            if row["feed_mode"] != row["old_mode"]:
                key = (row["exchange_segment"], row["security_id"])
                for shard in (row["shard_id"], row["moving_to_shard"]):
                    if shard is not None:
                        self._changes.append((shard, *key, row["feed_mode"], "update"))
                self._audit.add(
                    "MODE_CHANGE",
                    self.actor,
                    f"mode {row['old_mode']} -> {row['feed_mode']}",
                    key=key,
                    details={"old_mode": row["old_mode"], "new_mode": row["feed_mode"]},
                )

    # -- capacity -------------------------------------------------------------------------

    async def _ensure_room(
        self, keys: Sequence[Key], needed: int, protect_items: Sequence[int], outcome: AcquireOutcome, reason_kind: str
    ) -> None:
        capacity = self.budget.capacity
        total = await self.total()
        if total + needed <= capacity:
            return
        # Evicting every Tier A unit would leave Tier B plus these instruments.
        tier_b_outside = await self.fetch_one("tier_b_count_outside", _columns(keys))
        floor = (tier_b_outside["n"] if tier_b_outside else 0) + len(keys)
        if floor > capacity:
            raise ResourceExhausted(
                f"{len(keys)} instruments cannot fit: Tier B holds {floor - len(keys)} of the {capacity} capacity "
                f"({self.budget.connections} connections x {self.budget.per_connection}), leaving "
                f"{capacity - (floor - len(keys))} for Tier A"
            )
        protected = list(protect_items)
        while total + needed > capacity:
            candidates = await self.fetch("lru_units", {"exclude": protected, "limit": _LRU_BATCH})
            if not candidates:
                raise ResourceExhausted(
                    f"no Tier A unit left to evict: {total} of {capacity} subscribed, {needed} more needed"
                )
            for unit in candidates:
                if total + needed <= capacity:
                    break
                protected.append(unit["item_id"])
                message = (
                    f"evicted as least recently used (last used {unit['last_used_at']:%Y-%m-%d %H:%M:%S} UTC) to make room "
                    f"for {needed} instruments; {total} of {capacity} were subscribed"
                )
                released = await self.evict_unit(unit, reason_kind, message)
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

    async def evict_unit(self, unit: dict[str, Any], reason_kind: str, message: str) -> int:
        """Releases a whole Tier A unit and marks its watchlist item EVICTED."""
        item_id = int(unit["item_id"])
        keys = [
            (r["exchange_segment"], r["security_id"])
            for r in await self.fetch("owner_keys", {"owner_kind": OWNER_UNIT, "owner_id": str(item_id)})
        ]
        released = await self.release(
            OWNER_UNIT, str(item_id), reason=message, user_id=unit["user_id"], action="UNSUBSCRIBE"
        )
        await self.conn.execute(
            QUERIES["mark_evicted"], {"item_id": item_id, "reason": reason_kind, "message": message}
        )
        self._audit.add(
            "EVICT",
            self.actor,
            message,
            tier="A",
            unit_id=item_id,
            user_id=unit["user_id"],
            details={"reason": reason_kind, "symbol": unit["symbol"], "released": released},
        )
        self.event(unit["user_id"], "evicted", item_id, removed=keys)
        return released

    # -- moves ----------------------------------------------------------------------------

    def move_started(self, key: Key, mode: str, source: int, target: int, reason: str) -> None:
        self._changes.append((target, *key, mode, "add"))
        self._audit.add(
            "MOVE", self.actor, reason, key=key, from_shard=source, to_shard=target, details={"phase": "started"}
        )

    def move_finished(self, key: Key, mode: str, source: int, target: int) -> None:
        self._changes.append((source, *key, mode, "remove"))
        self._audit.add(
            "MOVE",
            self.actor,
            "target shard subscribed; source released",
            key=key,
            from_shard=source,
            to_shard=target,
            details={"phase": "finished"},
        )

    def audit(self, action: str, reason: str, **fields: Any) -> None:
        self._audit.add(action, self.actor, reason, **fields)

    # -- events and flushing --------------------------------------------------------------

    def event(
        self, user_id: str, kind: str, item_id: int, *, added: Sequence[Key] = (), removed: Sequence[Key] = ()
    ) -> None:
        self._events.append(
            {
                "user_id": user_id,
                "kind": kind,
                "item_id": item_id,
                "added": json.dumps([list(k) for k in added]),
                "removed": json.dumps([list(k) for k in removed]),
            }
        )

    async def flush(self) -> None:
        """Writes the audit rows, the shards' change log and the users' events, and queues the
        notifications that wake the streams when the transaction commits."""
        if self._audit.rows:
            columns = list(zip(*self._audit.rows, strict=True))
            await self.conn.execute(
                QUERIES["insert_audit"],
                dict(
                    zip(
                        (
                            "actions",
                            "actors",
                            "reasons",
                            "tiers",
                            "segments",
                            "ids",
                            "units",
                            "users",
                            "from_shards",
                            "to_shards",
                            "details",
                        ),
                        map(list, columns),
                        strict=True,
                    )
                ),
            )
        if self._changes:
            # Adds before removes keeps a make-before-break order within one change set.
            order = {"add": 0, "update": 1, "remove": 2}
            changes = sorted(self._changes, key=lambda c: order[c[4]])
            shards, segments, ids, modes, kinds = map(list, zip(*changes, strict=True))
            await self.conn.execute(
                QUERIES["insert_changes"],
                {"shards": shards, "segments": segments, "ids": ids, "modes": modes, "changes": kinds},
            )
            await self.conn.execute(QUERIES["notify_assignments"], {"payload": ",".join(map(str, sorted(set(shards))))})
        for event in self._events:
            await self.conn.execute(QUERIES["insert_watchlist_event"], event)
        if self._events:
            await self.conn.execute(
                QUERIES["notify_watchlists"], {"payload": ",".join(sorted({e["user_id"] for e in self._events}))}
            )
        self._audit.rows.clear()
        self._changes.clear()
        self._events.clear()
