"""Re-centring: when an underlying has moved far enough from a chain's ATM, add the new
strikes first, then drop the ones that left the window, within the budget throughout.
When the sweep moves a chain is `recenter_policy.py`'s rule."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from dataserver.registry.v1 import registry_pb2

from services.common.db import Pool
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.keys import Key
from services.common.last_prices import LastPriceSource, LastQuote, last_quote
from services.subscription.ledger import Ledger
from services.subscription.model import OWNER_TIER_B, OWNER_UNIT, Budget, Eviction, ResolvedUnit
from services.subscription.recenter_policy import (
    SKIP_COOLDOWN,
    RecenterPolicy,
    beyond_hysteresis,
    centred_on_previous_close,
)
from services.subscription.resolver import UnitResolver
from services.subscription.sql import Row
from services.subscription.tier_b import chain_entry_id

# The Tier B entry's columns a re-centre keeps; the window's are set anew.
_TIER_B_IDENTITY = (
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


@dataclass(frozen=True)
class RecenterOutcome:
    item_id: int | None
    entry_id: str | None
    symbol: str
    expiry: str
    price: float
    price_source: registry_pb2.PriceSource
    old_atm: float | None
    new_atm: float | None
    moved: bool
    added: int
    removed: int
    evictions: list[Eviction]


@dataclass(frozen=True)
class _Target:
    """What is re-centred: a Tier A unit or a Tier B chain, as read before the lock."""

    owner_kind: str
    owner_id: str
    row: Row
    user_id: str | None

    @property
    def item_id(self) -> int | None:
        return int(self.owner_id) if self.owner_kind == OWNER_UNIT else None

    @property
    def entry_id(self) -> str | None:
        return self.owner_id if self.owner_kind == OWNER_TIER_B else None

    @property
    def owner(self) -> str:
        return f"{self.owner_kind}:{self.owner_id}"

    @property
    def underlying(self) -> Key:
        return (str(self.row["underlying_segment"]), int(self.row["underlying_security_id"]))

    @property
    def symbol(self) -> str:
        return str(self.row["symbol"] if self.owner_kind == OWNER_UNIT else self.row["underlying_symbol"])

    def outcome(
        self,
        window: ResolvedUnit,
        *,
        moved: bool = False,
        added: int = 0,
        removed: int = 0,
        evictions: list[Eviction] | None = None,
    ) -> RecenterOutcome:
        """Re-centred on `window` (its ATM), or left where it was (the current ATM)."""
        assert window.underlying_price is not None
        return RecenterOutcome(
            self.item_id,
            self.entry_id,
            self.symbol,
            self.row["expiry_date"].isoformat(),
            window.underlying_price,
            window.price_source,
            self.row["atm_strike"],
            window.atm_strike if moved else self.row["atm_strike"],
            moved,
            added,
            removed,
            evictions or [],
        )


@dataclass
class SweepOutcome:
    checked: int
    moved: list[RecenterOutcome]
    skipped: Counter[str]


class Recentering:
    def __init__(
        self, pool: Pool, budget: Budget, resolver: UnitResolver, policy: RecenterPolicy, prices: LastPriceSource
    ) -> None:
        self._pool = pool
        self._budget = budget
        self._resolver = resolver
        self.policy = policy
        self._prices = prices

    async def unit(
        self,
        item_id: int,
        actor: str,
        *,
        price: float = 0.0,
        hysteresis: float | None = None,
        owner: str | None = None,
    ) -> RecenterOutcome:
        """Re-centres one Tier A unit; with `owner`, only if the item is that user's."""
        async with Ledger.unlocked(self._pool, self._budget) as ledger:
            item = await ledger.item(item_id)
        if item is None:
            raise NotFound(f"no watchlist item {item_id}")
        if owner is not None and item["user_id"] != owner:
            raise PermissionDenied(
                f"watchlist item {item_id} is not yours: owners may re-centre their own items, admins any"
            )
        if item["state"] != "ACTIVE" or item["expiry_date"] is None:
            raise InvalidArgument(
                f"watchlist item {item_id} has no live option chain to re-centre (state {item['state']})"
            )
        target = _Target(OWNER_UNIT, str(item_id), item, item["user_id"])
        return await self._recenter(target, actor, price=price, hysteresis=hysteresis)

    async def tier_b_chain(
        self, symbol: str, expiry: str, actor: str, *, price: float = 0.0, hysteresis: float | None = None
    ) -> RecenterOutcome:
        entry_id = chain_entry_id(symbol.upper(), expiry)
        async with Ledger.unlocked(self._pool, self._budget) as ledger:
            entry = await ledger.tier_b_entry(entry_id)
        if entry is None:
            raise NotFound(f"the Tier B plan has no chain {symbol} {expiry}; GetTierBPlan lists its chains")
        target = _Target(OWNER_TIER_B, entry_id, entry, None)
        return await self._recenter(target, actor, price=price, hysteresis=hysteresis)

    def _may_move(self, row: Row, live_price: float, hysteresis: float | None) -> bool:
        """Whether a live price could move the chain `row` (the rule `_recenter` applies)."""
        threshold = self.policy.hysteresis if hysteresis is None else hysteresis
        return centred_on_previous_close(row.get("price_source")) or beyond_hysteresis(
            live_price, row["atm_strike"], row["strike_step"], threshold
        )

    async def _recenter(
        self, target: _Target, actor: str, *, price: float, hysteresis: float | None, live: bool = False
    ) -> RecenterOutcome:
        """`live`: `price` is the feed's (the sweep's), so the window records it as a last price."""
        row = target.row
        expiry = row["expiry_date"].isoformat()
        window = await self._resolver.window(target.symbol, expiry, row["strikes_each_side"], price=price)
        now_at = window.underlying_price
        assert now_at is not None
        if live or window.price_source == registry_pb2.PRICE_SOURCE_LAST_PRICE:
            window = dataclasses.replace(window, price_source=registry_pb2.PRICE_SOURCE_LAST_PRICE)
            first_live = centred_on_previous_close(row.get("price_source"))
        else:
            first_live = False
        threshold = self.policy.hysteresis if hysteresis is None else hysteresis
        moved = window.atm_strike != row["atm_strike"] and (
            first_live or beyond_hysteresis(now_at, row["atm_strike"], row["strike_step"], threshold)
        )
        if not moved and not first_live:
            return target.outcome(window)
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            # Under the lock: the unit may have been evicted or removed since it was read.
            if target.owner_kind == OWNER_UNIT:
                current = await ledger.item(int(target.owner_id))
            else:
                current = await ledger.tier_b_entry(target.owner_id)
            if current is None or (target.owner_kind == OWNER_UNIT and current["state"] != "ACTIVE"):
                return target.outcome(window)
            if not moved:  # on the first live price's ATM already: hysteresis applies from now on
                await self._mark_live(ledger, target, current, window)
                return target.outcome(window)
            outcome = await self._move(ledger, target, window)
        self.policy.moved(target.owner)
        return outcome

    async def _mark_live(self, ledger: Ledger, target: _Target, current: Row, window: ResolvedUnit) -> None:
        if target.item_id is not None:
            await ledger.update_item_window(target.item_id, window, current["instrument_count"])
        else:
            await ledger.save_tier_b_entry({**current, "price_source": str(window.price_source)})

    async def _move(self, ledger: Ledger, target: _Target, window: ResolvedUnit) -> RecenterOutcome:
        """Adds the window's new strikes, then drops the ones that left it (the underlying and
        the expiry's future are in every window: they stay)."""
        row, kind, owner_id, user_id = target.row, target.owner_kind, target.owner_id, target.user_id
        what = f"{target.symbol} {row['expiry_date'].isoformat()}"
        wanted = window.instruments(kind == OWNER_UNIT or row["include_underlying"])
        held = set(await ledger.owner_keys(kind, owner_id))
        outcome = await ledger.acquire(
            kind,
            owner_id,
            wanted,
            row["feed_mode"],
            reason=f"re-centre {what}",
            user_id=user_id,
            protect_items=[target.item_id] if target.item_id else [],
        )
        left: list[Key] = sorted(held - {i.key for i in wanted})
        removed = await ledger.release(
            kind, owner_id, keys=left, reason=f"re-centre {what}: left the window", user_id=user_id
        )
        if target.item_id is not None:
            await ledger.update_item_window(target.item_id, window, len(wanted))
            added = [i.key for i in wanted if i.key not in held]
            ledger.event(row["user_id"], "recentered", target.item_id, added=added, removed=left)
        else:
            await ledger.save_tier_b_entry(
                {
                    **{k: row[k] for k in _TIER_B_IDENTITY},
                    "atm_strike": window.atm_strike,
                    "strike_step": window.strike_step,
                    "instrument_count": len(wanted),
                    "price_source": str(window.price_source),
                }
            )
        ledger.audit(
            "RECENTER",
            f"ATM {row['atm_strike']} -> {window.atm_strike} at price {window.underlying_price}",
            tier="A" if kind == OWNER_UNIT else "B",
            unit_id=target.item_id,
            user_id=user_id,
            details={
                "owner": f"{kind}:{owner_id}",
                "old_atm": row["atm_strike"],
                "new_atm": window.atm_strike,
                "added": len(outcome.subscribed),
                "removed": removed,
            },
        )
        return target.outcome(
            window, moved=True, added=len(outcome.subscribed), removed=removed, evictions=outcome.evictions
        )

    async def all_chains(self, actor: str, *, tiers: tuple[str, ...], hysteresis: float | None) -> SweepOutcome:
        """The automatic sweep: each chain on its underlying's live price, unless the price is
        missing, zero or stale or the chain is cooling down (each counted by reason)."""
        targets: list[_Target] = []
        async with Ledger.unlocked(self._pool, self._budget) as ledger:
            if "B" in tiers:
                targets += [
                    _Target(OWNER_TIER_B, r["entry_id"], r, None)
                    for r in await ledger.tier_b_entries()
                    if r["kind"] == "chain"
                ]
            if "A" in tiers:
                targets += [
                    _Target(OWNER_UNIT, str(r["item_id"]), r, r["user_id"])
                    for r in await ledger.items(None, "ACTIVE")
                    if r["expiry_date"] is not None
                ]
        sweep = SweepOutcome(len(targets), [], Counter())
        quotes: dict[Key, LastQuote | None] = {}
        for target in targets:
            if self.policy.cooling(target.owner):
                sweep.skipped[SKIP_COOLDOWN] += 1
                continue
            if target.underlying not in quotes:
                quotes[target.underlying] = await last_quote(self._prices, *target.underlying)
            quote = quotes[target.underlying]
            problem = self.policy.price_problem(quote)
            if problem is not None:
                sweep.skipped[problem] += 1
                continue
            assert quote is not None  # price_problem names a missing one
            if not self._may_move(target.row, quote.price, hysteresis):
                continue  # within the hysteresis: no need to ask the registry for a window
            try:
                result = await self._recenter(target, actor, price=quote.price, hysteresis=hysteresis, live=True)
            except (NotFound, InvalidArgument):
                continue  # removed or evicted meanwhile, or its expiry no longer listed
            if result.moved:
                sweep.moved.append(result)
        return sweep
