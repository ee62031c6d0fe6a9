"""Read-only views: status, subscriptions, one subscription with owners and history, audit."""

from __future__ import annotations

from datetime import datetime
from datetime import time as clock_time
from typing import Any

from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.clock import Clock, trading_date_of
from services.common.db import Pool
from services.common.keys import Key, key_proto
from services.common.market_calendar import IST
from services.common.timestamps import timestamp
from services.subscription.convert import MODE_TO_PROTO, TIER_TO_PROTO
from services.subscription.model import Budget
from services.subscription.readmodel import ReadModel
from services.subscription.sql import Row

_USERS_SHOWN = 1000


class Reports:
    def __init__(self, pool: Pool, budget: Budget, clock: Clock) -> None:
        self._reads = ReadModel(pool)
        self._budget = budget
        self._clock = clock

    async def status(self) -> pb.GetSubscriptionStatusResponse:
        midnight_ist = datetime.combine(trading_date_of(self._clock), clock_time(0), tzinfo=IST)
        rows = await self._reads.status(
            connections=self._budget.connections, users_shown=_USERS_SHOWN, evictions_since=midnight_ist
        )
        shards = rows.shards
        by_shard = {row["shard_id"]: row for row in shards}
        outgoing = {row["shard_id"]: row["n"] for row in rows.moving_out}
        total = sum(row["n"] for row in shards)
        owner_counts = {row["owner_kind"]: row["n"] for row in rows.owners}
        response = pb.GetSubscriptionStatusResponse(
            subscribed_count=total,
            capacity=self._budget.capacity,
            connection_count=self._budget.connections,
            per_connection_limit=self._budget.per_connection,
            utilization=total / self._budget.capacity if self._budget.capacity else 0.0,
            tiers=[
                pb.TierUsage(
                    tier=pb.TIER_A,
                    instrument_count=sum(r["a"] for r in shards),
                    owner_count=owner_counts.get("unit", 0),
                ),
                pb.TierUsage(
                    tier=pb.TIER_B,
                    instrument_count=sum(r["b"] for r in shards),
                    owner_count=owner_counts.get("tier_b", 0),
                ),
            ],
            shards=[
                pb.ShardUsage(
                    shard_id=shard,
                    instrument_count=by_shard.get(shard, {}).get("n", 0) + by_shard.get(shard, {}).get("incoming", 0),
                    limit=self._budget.per_connection,
                    moves_in_flight=outgoing.get(shard, 0) + by_shard.get(shard, {}).get("incoming", 0),
                    tier_a_count=by_shard.get(shard, {}).get("a", 0),
                    tier_b_count=by_shard.get(shard, {}).get("b", 0),
                    connected=condition.connected,
                    down_since=timestamp(condition.down_since),
                    down_reason=condition.reason,
                )
                for shard, condition in zip(range(self._budget.connections), rows.health.shards, strict=True)
            ],
            users=[
                pb.UserUsage(
                    user_id=r["user_id"],
                    active_item_count=r["active"],
                    evicted_item_count=r["evicted"],
                    instrument_count=r["instruments"],
                )
                for r in rows.users
            ],
            user_count=rows.user_count,
            evictions_today=rows.evictions,
        )
        response.as_of.GetCurrentTime()
        return response

    async def subscriptions(
        self, *, tier: str | None, shard_id: int | None, user_id: str | None, offset: int, limit: int
    ) -> tuple[list[pb.Subscription], int]:
        rows, total = await self._reads.subscriptions(
            tier=tier, shard_id=shard_id, user_id=user_id, offset=offset, limit=limit
        )
        keys = [(r["exchange_segment"], r["security_id"]) for r in rows]
        owners = await self._owners(keys)
        return [self._subscription(r, owners.get(k, [])) for r, k in zip(rows, keys, strict=True)], total

    async def subscription(self, key: Key) -> pb.Subscription | None:
        row = await self._reads.subscription(key)
        if row is None:
            return None
        owners = await self._owners([key])
        return self._subscription(row, owners.get(key, []))

    async def audit(self, **filters: Any) -> list[Row]:
        return await self._reads.audit(filters)

    async def _owners(self, keys: list[Key]) -> dict[Key, list[pb.SubscriptionOwner]]:
        result: dict[Key, list[pb.SubscriptionOwner]] = {}
        for row in await self._reads.owners_of(keys):
            unit = row["owner_kind"] == "unit"
            owner = pb.SubscriptionOwner(
                tier=pb.TIER_A if unit else pb.TIER_B,
                user_id=row["user_id"] or "" if unit else "",
                item_id=row["owner_id"] if unit else "",
                plan_entry_id="" if unit else row["owner_id"],
                mode=MODE_TO_PROTO[row["feed_mode"]],
                created_at=timestamp(row["created_at"]),
            )
            result.setdefault((row["exchange_segment"], row["security_id"]), []).append(owner)
        return result

    @staticmethod
    def _subscription(row: Row, owners: list[pb.SubscriptionOwner]) -> pb.Subscription:
        subscription = pb.Subscription(
            key=key_proto((row["exchange_segment"], row["security_id"])),
            trading_symbol=row["trading_symbol"],
            mode=MODE_TO_PROTO[row["feed_mode"]],
            shard_id=row["shard_id"],
            ref_count=row["ref_count"],
            owners=owners,
            tier=TIER_TO_PROTO[row["tier"]],
            subscribed_at=timestamp(row["subscribed_at"]),
            last_used_at=timestamp(row["last_used_at"]),
        )
        if row["moving_to_shard"] is not None:
            subscription.moving_to_shard_id = row["moving_to_shard"]
        return subscription
