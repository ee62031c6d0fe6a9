"""Releasing what expired: after a master reload, chains whose expiry has passed are no
longer listed, so their subscriptions would point at contracts that no longer exist.

A Tier A unit on an expired expiry is evicted, visibly (the item stays, EVICTED with reason
EXPIRED and a message naming the expiry), rather than rolled to the next expiry: the user
chose that expiry (or took the nearest on the day), and silently giving them another
contract month would change what their watchlist shows without asking; they re-add the
symbol to get the nearest expiry again. Tier B chains on an expired expiry are removed here,
with that reason; the scheduler then re-sends the plan, whose nearest-N chains re-resolve to
the next expiries (the roll). Expired contracts no longer trade, so releasing them before
the replacement is subscribed loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from services.common.db import Pool
from services.subscription.ledger import Ledger
from services.subscription.model import OWNER_TIER_B, OWNER_UNIT, Budget

EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class ExpiredOutcome:
    units_evicted: int
    chains_removed: int
    instruments_unsubscribed: int


async def release_expired(pool: Pool, budget: Budget, trading_date: date, actor: str) -> ExpiredOutcome:
    """Evicts Tier A units and removes Tier B chains whose expiry is before `trading_date`."""
    async with Ledger.transaction(pool, budget, actor) as ledger:
        instruments = 0
        units = 0
        for item in await ledger.items(None, "ACTIVE"):
            expiry = item["expiry_date"]
            if expiry is None or expiry >= trading_date:
                continue
            item_id = int(item["item_id"])
            reason = f"{item['symbol']} {expiry} expired: the master of {trading_date} no longer lists it"
            keys = await ledger.owner_keys(OWNER_UNIT, str(item_id))
            instruments += await ledger.release(OWNER_UNIT, str(item_id), reason=reason, user_id=item["user_id"])
            await ledger.mark_evicted(item_id, EXPIRED, reason)
            ledger.event(item["user_id"], "evicted", item_id, removed=keys)
            ledger.audit(
                "EVICT",
                reason,
                tier="A",
                unit_id=item_id,
                user_id=item["user_id"],
                details={"reason": EXPIRED, "symbol": item["symbol"]},
            )
            units += 1
        chains = 0
        for entry in await ledger.tier_b_entries():
            expiry = entry["expiry_date"]
            if entry["kind"] != "chain" or expiry is None or expiry >= trading_date:
                continue
            reason = (
                f"Tier B {entry['underlying_symbol']} {expiry} expired: the master of {trading_date} no longer lists it"
            )
            instruments += await ledger.release(OWNER_TIER_B, entry["entry_id"], reason=reason)
            await ledger.delete_tier_b_entry(entry["entry_id"])
            chains += 1
    return ExpiredOutcome(units, chains, instruments)
