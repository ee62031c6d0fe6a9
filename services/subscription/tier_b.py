"""Tier B: the always-on plan (index chains, index values, MCX contracts), replaced whole
and idempotently, make-before-break: new instruments in, then old ones out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

from services.common.db import Pool
from services.common.errors import InvalidArgument
from services.common.keys import Key
from services.subscription.ledger import Ledger
from services.subscription.model import OWNER_TIER_B, Budget, Eviction, Instrument, ResolvedUnit
from services.subscription.resolver import UnitResolver
from services.subscription.sql import Row

log = logging.getLogger(__name__)

# A sanity bound only: the plan takes as many expiries as the master lists (NIFTY lists about 18).
MAX_NEAREST_EXPIRIES = 50
MAX_NEAREST_FUTURES = 12


@dataclass(frozen=True)
class ChainSpec:
    symbol: str
    expiry_dates: tuple[str, ...]
    nearest: int
    strikes_each_side: int
    include_underlying: bool
    mode: str
    nearest_futures: int = 0


@dataclass(frozen=True)
class PlanEntry:
    entry_id: str
    kind: str  # "chain" or "instrument"
    mode: str
    instruments: tuple[Instrument, ...]
    unit: ResolvedUnit | None = None
    include_underlying: bool = True
    part: str = ""  # the underlying a plain instrument belongs to (a commodity's futures)

    def row(self) -> dict[str, Any]:
        unit = self.unit
        return {
            "entry_id": self.entry_id,
            "kind": self.kind,
            "underlying_symbol": unit.symbol if unit else "",
            "expiry_date": unit.expiry if unit else None,
            "strikes_each_side": unit.strikes_each_side if unit else 0,
            "include_underlying": self.include_underlying,
            "feed_mode": self.mode,
            "underlying_segment": (unit.underlying.key[0] if unit else self.instruments[0].key[0]),
            "underlying_security_id": (unit.underlying.key[1] if unit else self.instruments[0].key[1]),
            "atm_strike": unit.atm_strike if unit else None,
            "strike_step": unit.strike_step if unit else None,
            "instrument_count": len(self.instruments),
            "price_source": str(unit.price_source) if unit and unit.price_source else None,
        }


@dataclass(frozen=True)
class PlanOutcome:
    added: int
    removed: int
    kept: int
    evictions: list[Eviction]
    entries: list[PlanEntry]


def parts(entries: list[PlanEntry]) -> dict[str, int]:
    """Distinct instruments per part of the plan: each chain's underlying, and "instruments"
    for the plain ones; an instrument two parts share counts in the first."""
    counted: set[Key] = set()
    by_part: dict[str, int] = {}
    for entry in entries:
        part = entry.part or (entry.unit.symbol if entry.unit else "instruments")
        fresh = {i.key for i in entry.instruments} - counted
        counted |= fresh
        by_part[part] = by_part.get(part, 0) + len(fresh)
    return by_part


def chain_entry_id(symbol: str, expiry: date | str) -> str:
    return f"chain:{symbol}:{expiry}"


class _DryRun(Exception):
    def __init__(self, outcome: PlanOutcome) -> None:
        self.outcome = outcome


class TierB:
    def __init__(self, pool: Pool, budget: Budget, resolver: UnitResolver) -> None:
        self._pool = pool
        self._budget = budget
        self._resolver = resolver
        self.default_width = resolver.widths.index
        self.max_width = resolver.widths.maximum

    async def current(self) -> tuple[Row | None, list[Row], int]:
        """The plan as last set, its entries, and how many instruments Tier B holds."""
        async with Ledger.unlocked(self._pool, self._budget) as ledger:
            return await ledger.tier_b_plan(), await ledger.tier_b_entries(), await ledger.tier_b_count()

    async def resolve_chain(self, spec: ChainSpec) -> list[PlanEntry]:
        listed = await self._resolver.option_expiries(spec.symbol)
        if spec.expiry_dates:
            missing = [e for e in spec.expiry_dates if e not in listed]
            if missing:
                raise InvalidArgument(
                    f"{spec.symbol} lists no options expiring {', '.join(missing)}; listed: {', '.join(listed[:12])}"
                )
            expiries = list(spec.expiry_dates)
        else:
            if not 0 <= spec.nearest <= MAX_NEAREST_EXPIRIES:
                raise InvalidArgument(
                    f"nearest_expiries {spec.nearest} is out of range: accepted 1..{MAX_NEAREST_EXPIRIES} "
                    "(0 means 1), capped by the expiries listed"
                )
            expiries = listed[: spec.nearest or 1]
        if not 0 <= spec.nearest_futures <= MAX_NEAREST_FUTURES:
            raise InvalidArgument(
                f"nearest_futures {spec.nearest_futures} is out of range: accepted 0..{MAX_NEAREST_FUTURES}"
            )
        entries = [
            PlanEntry(f"instrument:{f.key[0]}:{f.key[1]}", "instrument", spec.mode, (f,), part=spec.symbol)
            for f in await self._resolver.nearest_futures(spec.symbol, spec.nearest_futures)
        ]
        for expiry in expiries:
            unit = await self._resolver.window(spec.symbol, expiry, spec.strikes_each_side)
            entries.append(
                PlanEntry(
                    chain_entry_id(unit.symbol, expiry),
                    "chain",
                    spec.mode,
                    tuple(unit.instruments(spec.include_underlying)),
                    unit,
                    spec.include_underlying,
                )
            )
        return entries

    async def resolve_instrument(self, key: Key, mode: str) -> PlanEntry:
        instrument = await self._resolver.instrument(key)
        return PlanEntry(f"instrument:{key[0]}:{key[1]}", "instrument", mode, (instrument,))

    async def apply(
        self, entries: list[PlanEntry], request: dict[str, Any], actor: str, *, dry_run: bool
    ) -> PlanOutcome:
        try:
            outcome = await self._apply(entries, request, actor, dry_run)
        except _DryRun as rolled_back:
            return rolled_back.outcome
        log.info(
            "Tier B plan set",
            extra={
                "instruments": outcome.added + outcome.kept,
                "added": outcome.added,
                "removed": outcome.removed,
                "by_part": parts(outcome.entries),
                "actor": actor,
            },
        )
        return outcome

    async def _apply(self, entries: list[PlanEntry], request: dict[str, Any], actor: str, dry_run: bool) -> PlanOutcome:
        desired = {e.entry_id: e for e in entries}
        async with Ledger.transaction(self._pool, self._budget, actor) as ledger:
            current = {row["entry_id"]: row for row in await ledger.tier_b_entries()}
            evictions: list[Eviction] = []
            added = 0
            for entry in desired.values():  # make: every new instrument first
                acquired = await ledger.acquire(
                    OWNER_TIER_B, entry.entry_id, entry.instruments, entry.mode, reason="Tier B plan"
                )
                evictions += acquired.evictions
                added += len(acquired.subscribed)
            removed = 0
            for entry_id in current.keys() - desired.keys():  # then break
                removed += await ledger.release(OWNER_TIER_B, entry_id, reason="removed from the Tier B plan")
                await ledger.delete_tier_b_entry(entry_id)
            for entry in desired.values():
                stale = set(await ledger.owner_keys(OWNER_TIER_B, entry.entry_id)) - {i.key for i in entry.instruments}
                if stale:
                    removed += await ledger.release(
                        OWNER_TIER_B, entry.entry_id, keys=list(stale), reason="left the Tier B window"
                    )
                await ledger.save_tier_b_entry(entry.row())
            await ledger.save_tier_b_plan(request)
            planned = {i.key for e in desired.values() for i in e.instruments}
            outcome = PlanOutcome(added, removed, len(planned) - added, evictions, list(desired.values()))
            if dry_run:
                raise _DryRun(outcome)
        return outcome
