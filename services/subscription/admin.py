"""Admin operations: end of day, unsubscribing or clearing Tier A, rebalancing shards, and
the background upkeep (failing over down shards, finishing moves, pruning logs)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date, datetime

from services.common.db import Pool
from services.common.errors import FailedPrecondition
from services.common.keys import Key
from services.common.market_calendar import IST, NSE_CLOSE
from services.subscription.expired import ExpiredOutcome, release_expired
from services.subscription.ledger import Ledger
from services.subscription.metrics import SHARD_MOVES, SHARDS_DOWN, STRANDED
from services.subscription.model import OWNER_UNIT, Budget
from services.subscription.placement import plan_failover, plan_moves, spread
from services.subscription.shard_health import ShardHealth, describe

log = logging.getLogger(__name__)

# Moves one failover pass starts at most: it holds the ledger lock, and the upkeep's next
# pass (half a second later) starts the next batch.
FAILOVER_BATCH = 500


@dataclass(frozen=True)
class ReleaseCounts:
    units: int
    instruments: int
    users: int
    items_deleted: int = 0


@dataclass(frozen=True)
class EndOfDayOutcome:
    trading_date: date
    already_done: bool
    counts: ReleaseCounts


@dataclass(frozen=True)
class RebalanceOutcome:
    moves: list[tuple[Key, int, int]]
    spread_before: int
    spread_after: int


def check_after_close(trading_date: date, now: datetime) -> None:
    """Refuses an end of day before `trading_date`'s NSE close: clearing Tier A mid-session
    takes every user's chains away while the market still trades."""
    close = datetime.combine(trading_date, NSE_CLOSE, tzinfo=IST)
    if now < close:
        raise FailedPrecondition(
            f"end of day for {trading_date} runs after the close at {NSE_CLOSE:%H:%M} IST; "
            f"it is {now.astimezone(IST):%Y-%m-%d %H:%M} IST: set force to run it now"
        )


async def _release_units(
    ledger: Ledger, user_id: str | None, *, reason_kind: str, reason: str, delete: bool, active_only: bool
) -> ReleaseCounts:
    items = await ledger.items(user_id, "ACTIVE" if active_only else None)
    instruments = 0
    units = 0
    for item in items:
        keys = await ledger.owner_keys(OWNER_UNIT, str(item["item_id"]))
        if item["state"] == "ACTIVE":
            units += 1
        instruments += await ledger.release(OWNER_UNIT, str(item["item_id"]), reason=reason, user_id=item["user_id"])
        if delete:
            ledger.event(item["user_id"], "removed", item["item_id"], removed=keys)
        elif item["state"] == "ACTIVE":
            await ledger.mark_evicted(item["item_id"], reason_kind, reason)
            ledger.event(item["user_id"], "evicted", item["item_id"], removed=keys)
        if item["state"] == "ACTIVE":
            ledger.audit(
                "EVICT",
                reason,
                tier="A",
                unit_id=item["item_id"],
                user_id=item["user_id"],
                details={"reason": reason_kind, "symbol": item["symbol"]},
            )
    if delete:
        await ledger.delete_items([i["item_id"] for i in items])
    return ReleaseCounts(units, instruments, len({i["user_id"] for i in items}), len(items) if delete else 0)


class Admin:
    def __init__(
        self,
        pool: Pool,
        budget: Budget,
        move_settle_seconds: float,
        failover_seconds: float,
        rebalance_spread: int = 0,
    ) -> None:
        self._pool = pool
        self._budget = budget
        self._settle = move_settle_seconds
        self._failover = failover_seconds
        self._rebalance_spread = rebalance_spread

    async def end_of_day(self, trading_date: date, actor: str, *, keep_items: bool) -> EndOfDayOutcome:
        """Clears every Tier A unit that exists now, whether or not the date ran before: end of
        day is about content, so items added after an early run go at the next one."""
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            ran_before = await ledger.end_of_day_run(trading_date) is not None
            counts = await _release_units(
                ledger,
                None,
                reason_kind="END_OF_DAY",
                reason=f"end of day {trading_date}",
                delete=not keep_items,
                active_only=False,
            )
            await ledger.record_end_of_day(trading_date, asdict(counts))
        return EndOfDayOutcome(trading_date, ran_before, counts)

    async def release_expired(self, trading_date: date, actor: str) -> ExpiredOutcome:
        return await release_expired(self._pool, self._budget, trading_date, actor)

    async def unsubscribe_tier_a(self, user_id: str | None, actor: str, reason: str) -> ReleaseCounts:
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            return await _release_units(
                ledger,
                user_id,
                reason_kind="ADMIN",
                reason=reason or "admin unsubscribed Tier A",
                delete=False,
                active_only=True,
            )

    async def clear_watchlists(self, user_id: str | None, actor: str) -> ReleaseCounts:
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            return await _release_units(
                ledger, user_id, reason_kind="ADMIN", reason="watchlists cleared", delete=True, active_only=False
            )

    async def rebalance(self, actor: str, *, dry_run: bool, max_moves: int, why: str = "rebalance") -> RebalanceOutcome:
        """Evens out the shards whose connection is up; down shards are failover's to empty."""
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            health = await ledger.shard_health()
            loads = await ledger.shard_loads()
            pairs = plan_moves(loads, max_moves or None, health.down)
            after = list(loads)
            for source, target in pairs:
                after[source] -= 1
                after[target] += 1
            up = [s for s in range(len(loads)) if s not in health.down]
            before_spread, after_spread = spread([loads[s] for s in up]), spread([after[s] for s in up])
            reason = f"{why}: spread {before_spread} -> {after_spread}"
            if health.down:
                reason += f" over the live shards (down: {', '.join(map(str, sorted(health.down)))})"
            moves: list[tuple[Key, int, int]] = []
            by_source: dict[int, list[int]] = {}
            for source, target in pairs:
                by_source.setdefault(source, []).append(target)
            for source, targets in by_source.items():
                rows = await ledger.movable_on_shard(source, len(targets))
                for row, target in zip(rows, targets, strict=False):
                    key = (row["exchange_segment"], row["security_id"])
                    moves.append((key, source, target))
                    if not dry_run:
                        await ledger.start_move(key, row["feed_mode"], source, target, reason)
        if not dry_run:
            SHARD_MOVES.labels("rebalance").inc(len(moves))
        return RebalanceOutcome(moves, before_spread, after_spread)

    async def fail_over(self, actor: str = "system") -> int:
        """Starts moving, make-before-break, the instruments of shards down longer than the
        failover time to live shards with room, within the per-connection limit (a move counts
        on both shards until it ends); what finds no room stays. Runs on every replica: the
        plan is made again under the ledger lock, so concurrent passes never double a move.
        Returns how many moves it started."""
        async with Ledger.unlocked(self._pool, self._budget) as reader:
            health = await reader.shard_health()
            SHARDS_DOWN.set(len(health.down))
            if not await self._worth_locking(reader, health):
                return 0
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            health = await ledger.shard_health()
            due = health.down_longer_than(self._failover)
            loads = await ledger.shard_loads()
            candidates = {c.shard_id: await ledger.failover_candidates(c.shard_id, FAILOVER_BATCH) for c in due}
            pairs = plan_failover(
                loads,
                self._budget.per_connection,
                {s: len(rows) for s, rows in candidates.items()},
                health.down,
                FAILOVER_BATCH,
            )
            reasons = {c.shard_id: f"failover: {describe(c)}" for c in due}
            queues = {s: iter(rows) for s, rows in candidates.items()}
            for source, target in pairs:
                row = next(queues[source])
                key = (row["exchange_segment"], row["security_id"])
                await ledger.start_move(key, row["feed_mode"], source, target, reasons[source])
            stranded = sum(len(rows) for rows in candidates.values()) - len(pairs)
        if len(pairs) < FAILOVER_BATCH:  # a full batch leaves the rest to the next pass, not stranded
            STRANDED.set(stranded)
        if pairs:
            log.warning(
                "failing over down shards",
                extra={
                    "moves": len(pairs),
                    "stranded": stranded,
                    "shards": [reasons[s] for s in {s for s, _ in pairs}],
                },
            )
        SHARD_MOVES.labels("failover").inc(len(pairs))
        return len(pairs)

    async def rebalance_if_uneven(self) -> int:
        """Evens the shards out by itself once every shard is up, no move is in flight and the
        spread of their loads passes the threshold: shards that were down (or still connecting
        when the day's preload placed Tier B) come back empty, and nothing else refills them.
        Returns how many moves it started; a threshold of 0 turns it off."""
        if not self._rebalance_spread:
            return 0
        async with Ledger.unlocked(self._pool, self._budget) as reader:
            health = await reader.shard_health()
            if health.down or await reader.moves_due(0.0):
                return 0
            if spread(await reader.shard_loads()) <= self._rebalance_spread:
                return 0
        outcome = await self.rebalance(
            "system",
            dry_run=False,
            max_moves=FAILOVER_BATCH,
            why=f"automatic rebalance (spread over {self._rebalance_spread}, every shard up)",
        )
        if outcome.moves:
            log.info(
                "rebalancing uneven shards",
                extra={"moves": len(outcome.moves), "spread": outcome.spread_before, "after": outcome.spread_after},
            )
        return len(outcome.moves)

    async def _worth_locking(self, reader: Ledger, health: ShardHealth) -> bool:
        """Whether a shard is down past the failover time, holds instruments, and some live shard
        has room: read without the lock, so a pass with nothing to do never takes it."""
        due = health.down_longer_than(self._failover)
        if not due:
            STRANDED.set(0)
            return False
        loads = await reader.shard_loads()
        room = any(load < self._budget.per_connection for s, load in enumerate(loads) if s not in health.down)
        if not room:
            STRANDED.set(sum(loads[c.shard_id] for c in due))
        return room and any(loads[c.shard_id] for c in due)

    async def finish_settled_moves(self, actor: str = "system") -> int:
        """Completes moves whose target shard has had time to subscribe (make-before-break)."""
        async with Ledger.unlocked(self._pool, self._budget) as reader:
            if not await reader.moves_due(self._settle):
                return 0
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            rows = await ledger.settled_moves(self._settle)
            for row in rows:
                key = (row["exchange_segment"], row["security_id"])
                await ledger.finish_move(key, row["feed_mode"], row["shard_id"], row["moving_to_shard"])
            return len(rows)

    async def prune(self, keep_seconds: float) -> None:
        async with Ledger.unlocked(self._pool, self._budget) as ledger:
            await ledger.prune(keep_seconds)
