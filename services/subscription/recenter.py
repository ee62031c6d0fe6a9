"""Re-centring: when an underlying has moved far enough from a chain's ATM, add the new
strikes first, then drop the ones that left the window, within the budget throughout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from services.common.errors import InvalidArgument, NotFound
from services.subscription.ledger import QUERIES
from services.subscription.model import OWNER_TIER_B, OWNER_UNIT, Budget, Eviction, Key
from services.subscription.resolver import UnitResolver
from services.subscription.tier_b import chain_entry_id
from services.subscription.transactions import ledger_transaction


@dataclass(frozen=True)
class RecenterOutcome:
    item_id: int | None
    entry_id: str | None
    symbol: str
    expiry: str
    price: float
    price_source: int
    old_atm: float | None
    new_atm: float | None
    moved: bool
    added: int
    removed: int
    evictions: list[Eviction]


def has_moved(price: float, old_atm: float | None, step: float | None, hysteresis_strikes: float) -> bool:
    """True once the price is more than `hysteresis_strikes` steps from the current ATM, so a
    price wobbling between two strikes does not flip the window back and forth."""
    if old_atm is None or not step:
        return True
    return abs(price - old_atm) > hysteresis_strikes * step


class Recentering:
    def __init__(
        self, pool: AsyncConnectionPool, budget: Budget, resolver: UnitResolver, hysteresis_strikes: float
    ) -> None:
        self._pool = pool
        self._budget = budget
        self._resolver = resolver
        self.hysteresis_strikes = hysteresis_strikes

    async def unit(
        self, item_id: int, actor: str, *, price: float = 0.0, hysteresis: float | None = None
    ) -> RecenterOutcome:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(QUERIES["get_item"], {"item_id": item_id})
            item = await cursor.fetchone()
        if item is None:
            raise NotFound(f"no watchlist item {item_id}")
        if item["state"] != "ACTIVE" or item["expiry_date"] is None:
            raise InvalidArgument(
                f"watchlist item {item_id} has no live option chain to re-centre (state {item['state']})"
            )
        return await self._recenter(
            OWNER_UNIT,
            str(item_id),
            item,
            actor,
            price=price,
            hysteresis=hysteresis,
            user_id=item["user_id"],
            mode=item["feed_mode"],
        )

    async def tier_b_chain(
        self, symbol: str, expiry: str, actor: str, *, price: float = 0.0, hysteresis: float | None = None
    ) -> RecenterOutcome:
        entry_id = chain_entry_id(symbol.upper(), expiry)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(QUERIES["get_tier_b_entry"], {"entry_id": entry_id})
            entry = await cursor.fetchone()
        if entry is None:
            raise NotFound(f"the Tier B plan has no chain {symbol} {expiry}; GetTierBPlan lists its chains")
        return await self._recenter(
            OWNER_TIER_B,
            entry_id,
            entry,
            actor,
            price=price,
            hysteresis=hysteresis,
            user_id=None,
            mode=entry["feed_mode"],
        )

    async def _recenter(
        self,
        owner_kind: str,
        owner_id: str,
        row: dict[str, Any],
        actor: str,
        *,
        price: float,
        hysteresis: float | None,
        user_id: str | None,
        mode: str,
    ) -> RecenterOutcome:
        symbol = row["symbol"] if owner_kind == OWNER_UNIT else row["underlying_symbol"]
        expiry = row["expiry_date"].isoformat()
        window = await self._resolver.window(symbol, expiry, row["strikes_each_side"], price=price)
        assert window.underlying_price is not None
        threshold = self.hysteresis_strikes if hysteresis is None else hysteresis
        moved = window.atm_strike != row["atm_strike"] and has_moved(
            window.underlying_price, row["atm_strike"], row["strike_step"], threshold
        )
        item_id = int(owner_id) if owner_kind == OWNER_UNIT else None
        entry_id = owner_id if owner_kind == OWNER_TIER_B else None
        if not moved:
            return RecenterOutcome(
                item_id,
                entry_id,
                symbol,
                expiry,
                window.underlying_price,
                window.price_source,
                row["atm_strike"],
                row["atm_strike"],
                False,
                0,
                0,
                [],
            )
        include_underlying = owner_kind == OWNER_UNIT or row["include_underlying"]
        wanted = window.instruments(include_underlying)
        async with ledger_transaction(self._pool, self._budget, actor) as ledger:
            # Under the lock: the unit may have been evicted or removed since it was read.
            current = await ledger.fetch_one(
                "get_item" if owner_kind == OWNER_UNIT else "get_tier_b_entry",
                {"item_id": item_id} if owner_kind == OWNER_UNIT else {"entry_id": owner_id},
            )
            if current is None or (owner_kind == OWNER_UNIT and current["state"] != "ACTIVE"):
                return RecenterOutcome(
                    item_id,
                    entry_id,
                    symbol,
                    expiry,
                    window.underlying_price,
                    window.price_source,
                    row["atm_strike"],
                    row["atm_strike"],
                    False,
                    0,
                    0,
                    [],
                )
            held = {
                (r["exchange_segment"], r["security_id"])
                for r in await ledger.fetch("owner_keys", {"owner_kind": owner_kind, "owner_id": owner_id})
            }
            outcome = await ledger.acquire(
                owner_kind,
                owner_id,
                wanted,
                mode,
                reason=f"re-centre {symbol} {expiry}",
                user_id=user_id,
                protect_items=[item_id] if item_id else [],
            )
            left: list[Key] = sorted(held - {i.key for i in wanted})
            removed = await ledger.release(
                owner_kind, owner_id, keys=left, reason=f"re-centre {symbol} {expiry}: left the window", user_id=user_id
            )
            fields = {
                "atm_strike": window.atm_strike,
                "strike_step": window.strike_step,
                "underlying_price": window.underlying_price,
                "price_source": str(window.price_source),
                "instrument_count": len(wanted),
            }
            if owner_kind == OWNER_UNIT:
                await ledger.conn.execute(QUERIES["update_item_window"], {**fields, "item_id": item_id})
                ledger.event(
                    row["user_id"],
                    "recentered",
                    item_id or 0,
                    added=[i.key for i in wanted if i.key not in held],
                    removed=left,
                )
            else:
                await ledger.conn.execute(
                    QUERIES["upsert_tier_b_entry"],
                    {
                        **{
                            k: row[k]
                            for k in (
                                "entry_id",
                                "kind",
                                "underlying_symbol",
                                "expiry_date",
                                "strikes_each_side",
                                "include_underlying",
                                "feed_mode",
                                "underlying_segment",
                                "underlying_security_id",
                            )
                        },
                        "atm_strike": window.atm_strike,
                        "strike_step": window.strike_step,
                        "instrument_count": len(wanted),
                    },
                )
            ledger.audit(
                "RECENTER",
                f"ATM {row['atm_strike']} -> {window.atm_strike} at price {window.underlying_price}",
                tier="A" if owner_kind == OWNER_UNIT else "B",
                unit_id=item_id,
                user_id=user_id,
                details={
                    "owner": f"{owner_kind}:{owner_id}",
                    "old_atm": row["atm_strike"],
                    "new_atm": window.atm_strike,
                    "added": len(outcome.subscribed),
                    "removed": removed,
                },
            )
        return RecenterOutcome(
            item_id,
            entry_id,
            symbol,
            expiry,
            window.underlying_price,
            window.price_source,
            row["atm_strike"],
            window.atm_strike,
            True,
            len(outcome.subscribed),
            removed,
            outcome.evictions,
        )

    async def all_chains(
        self, actor: str, *, tiers: tuple[str, ...], hysteresis: float | None
    ) -> tuple[int, list[RecenterOutcome]]:
        targets: list[tuple[str, Any]] = []
        async with self._pool.connection() as conn:
            if "B" in tiers:
                cursor = await conn.execute(QUERIES["tier_b_entries"])
                targets += [("B", r) for r in await cursor.fetchall() if r["kind"] == "chain"]
            if "A" in tiers:
                cursor = await conn.execute(QUERIES["items_of"], {"user_id": None, "state": "ACTIVE"})
                targets += [("A", r) for r in await cursor.fetchall() if r["expiry_date"] is not None]
        moved: list[RecenterOutcome] = []
        for tier, row in targets:
            try:
                if tier == "B":
                    result = await self.tier_b_chain(
                        row["underlying_symbol"], row["expiry_date"].isoformat(), actor, hysteresis=hysteresis
                    )
                else:
                    result = await self.unit(row["item_id"], actor, hysteresis=hysteresis)
            except (NotFound, InvalidArgument):
                continue  # removed or evicted meanwhile
            if result.moved:
                moved.append(result)
        return len(targets), moved
