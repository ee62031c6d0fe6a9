"""The automatic re-centring sweep (RecenterAllChains) on a real subscription service: a
chain centred on a previous close moves on the first live price whatever the hysteresis;
never on a missing, zero or stale price; a cooldown per chain; the hysteresis past the
midpoint; make-before-break within the budget, audited. And ReleaseExpired."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.keys import Key
from services.common.last_prices import LastQuote
from services.subscription.recenter_policy import RecenterPolicy
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription
from tests.test_subscription_watchlists import expect, invariants

NIFTY: Key = ("IDX_I", 13)


class TimedPrices:
    """The gateway's snapshot as a test sets it: a last price and when it was received."""

    def __init__(self) -> None:
        self.quotes: dict[Key, LastQuote] = {}

    def set(self, key: Key, price: float, age: float = 0.0) -> None:
        self.quotes[key] = LastQuote(price, time.time() - age)

    async def last_quote(self, segment: str, security_id: int) -> LastQuote | None:
        return self.quotes.get((segment, security_id))

    async def last_price(self, segment: str, security_id: int) -> float | None:
        quote = self.quotes.get((segment, security_id))
        return quote.price if quote else None


async def sweep(service: SubscriptionUnderTest) -> pb.RecenterAllChainsResponse:
    return await service.stub.RecenterAllChains(pb.RecenterAllChainsRequest(), metadata=service.admin)


async def nifty_atm_and_step(service: SubscriptionUnderTest, price: float, expiry: str) -> tuple[float, float]:
    async with grpc.aio.insecure_channel(service.settings.registry_addr) as channel:
        chain = await registry_pb2_grpc.RegistryServiceStub(channel).GetOptionChain(
            registry_pb2.GetOptionChainRequest(
                underlying_symbol="NIFTY", expiry_date=expiry, strikes_each_side=1, underlying_price=price
            ),
            metadata=service.admin,
        )
    return chain.atm_strike, chain.strike_step


async def atms(service: SubscriptionUnderTest) -> list[float]:
    """The Tier B chain's ATM and the unit's, in that order."""
    plan = await service.stub.GetTierBPlan(pb.GetTierBPlanRequest(), metadata=service.admin)
    items = await service.rows("SELECT atm_strike FROM watchlist_items ORDER BY item_id")
    return [plan.resolved_chains[0].atm_strike, *(r["atm_strike"] for r in items)]


async def test_the_sweep_moves_on_fresh_live_prices_past_the_hysteresis_after_the_cooldown(
    database_url: str, masters_dir: Path
) -> None:
    prices = TimedPrices()
    ticks = [0.0]
    policy = RecenterPolicy(0.6, 5.0, 30.0, monotonic=lambda: ticks[0])
    async with running_subscription(
        database_url,
        masters_dir,
        prices=prices,
        recenter_policy=policy,
        feed_connections=1,
        feed_instruments_per_connection=40,
    ) as service:
        chain = pb.TierBChain(underlying_symbol="NIFTY", nearest_expiries=1, strikes_each_side=2)
        plan = await service.stub.SetTierBPlan(pb.SetTierBPlanRequest(chains=[chain]), metadata=service.admin)
        expiry = plan.chains[0].expiry_date
        unit = await service.stub.AddWatchlistItem(
            pb.AddWatchlistItemRequest(symbol="NIFTY", expiry_date=expiry, strikes_each_side=2),
            metadata=await service.user("alice"),
        )
        close = unit.watchlist_item.underlying_price
        assert unit.watchlist_item.price_source == registry_pb2.PRICE_SOURCE_PREVIOUS_CLOSE
        atm, step = await nifty_atm_and_step(service, close, expiry)
        assert await atms(service) == [atm, atm]

        # No price, a zero, a stale one: both chains stay, each skip counted with its reason.
        assert dict((await sweep(service)).chains_skipped) == {"no_live_price": 2}
        prices.set(NIFTY, 0.0)
        assert dict((await sweep(service)).chains_skipped) == {"zero_price": 2}
        first = atm + 0.55 * step  # past the midpoint, well within the hysteresis
        prices.set(NIFTY, first, age=31.0)
        stale = await sweep(service)
        assert (stale.chains_checked, stale.chains_moved, dict(stale.chains_skipped)) == (2, 0, {"stale_price": 2})
        assert await atms(service) == [atm, atm]

        # The first live price: both re-centre whatever the hysteresis, make-before-break.
        prices.set(NIFTY, first)
        moved = await sweep(service)
        assert moved.chains_moved == 2 and not moved.chains_skipped
        assert {(m.old_atm_strike, m.new_atm_strike) for m in moved.moved} == {(atm, atm + step)}
        assert all(m.price_source == registry_pb2.PRICE_SOURCE_LAST_PRICE for m in moved.moved)
        # The two windows are the same instruments: the chain subscribes the new strikes (the
        # unit shares them), the unit's move unsubscribes the old ones (the chain left them).
        assert sum(m.instruments_added for m in moved.moved) == sum(m.instruments_removed for m in moved.moved) == 2
        assert await atms(service) == [atm + step] * 2

        # Far away at once: the cooldown holds both; once it has passed they move.
        prices.set(NIFTY, atm + 3 * step)
        assert dict((await sweep(service)).chains_skipped) == {"cooldown": 2}
        ticks[0] += 5.0
        assert (await sweep(service)).chains_moved == 2
        assert await atms(service) == [atm + 3 * step] * 2

        # Live-centred now: past the midpoint but within the hysteresis stays; beyond it moves.
        ticks[0] += 5.0
        prices.set(NIFTY, atm + 3 * step + 1.05 * step)
        within = await sweep(service)
        assert (within.chains_moved, dict(within.chains_skipped)) == (0, {})
        prices.set(NIFTY, atm + 3 * step - 1.2 * step)
        assert (await sweep(service)).chains_moved == 2
        assert await atms(service) == [atm + 2 * step] * 2

        audit = await service.stub.ListAuditEntries(
            pb.ListAuditEntriesRequest(action=pb.AUDIT_ACTION_RECENTER), metadata=service.admin
        )
        assert len(audit.audit_entries) == 6
        assert {e.tier for e in audit.audit_entries} == {pb.TIER_A, pb.TIER_B}
        await invariants(service)


async def test_a_chain_on_its_previous_close_becomes_live_without_moving_when_the_atm_agrees(
    database_url: str, masters_dir: Path
) -> None:
    prices = TimedPrices()
    async with running_subscription(database_url, masters_dir, prices=prices) as service:
        chain = pb.TierBChain(underlying_symbol="NIFTY", nearest_expiries=1, strikes_each_side=2)
        plan = await service.stub.SetTierBPlan(pb.SetTierBPlanRequest(chains=[chain]), metadata=service.admin)
        expiry, atm = plan.chains[0].expiry_date, plan.chains[0].atm_strike
        _, step = await nifty_atm_and_step(service, atm, expiry)
        prices.set(NIFTY, atm + 0.2 * step)  # the first live price, on the same ATM
        assert (await sweep(service)).chains_moved == 0
        # From now on the hysteresis applies: past the midpoint alone no longer moves it.
        prices.set(NIFTY, atm + 0.7 * step)
        assert (await sweep(service)).chains_moved == 0
        rows = await service.rows("SELECT price_source FROM tier_b_entries")
        assert rows == [{"price_source": str(registry_pb2.PRICE_SOURCE_LAST_PRICE)}]


async def test_release_expired_evicts_units_and_removes_chains_on_a_passed_expiry(
    database_url: str, masters_dir: Path
) -> None:
    async with running_subscription(database_url, masters_dir) as service:
        alice = await service.user("alice")
        chain = pb.TierBChain(underlying_symbol="NIFTY", nearest_expiries=2, strikes_each_side=2)
        plan = await service.stub.SetTierBPlan(pb.SetTierBPlanRequest(chains=[chain]), metadata=service.admin)
        first, second = (c.expiry_date for c in plan.chains)
        old = await service.stub.AddWatchlistItem(
            pb.AddWatchlistItemRequest(symbol="NIFTY", expiry_date=first, strikes_each_side=1), metadata=alice
        )
        new = await service.stub.AddWatchlistItem(
            pb.AddWatchlistItemRequest(symbol="NIFTY", expiry_date=second, strikes_each_side=1), metadata=alice
        )
        await expect(
            service.stub.ReleaseExpired(pb.ReleaseExpiredRequest(trading_date=second), metadata=alice),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await expect(
            service.stub.ReleaseExpired(pb.ReleaseExpiredRequest(trading_date="tomorrow"), metadata=service.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        # The day after the first expiry (the second expiry's date will do: it is still live).
        reply = await service.stub.ReleaseExpired(pb.ReleaseExpiredRequest(trading_date=second), metadata=service.admin)
        assert (reply.units_evicted, reply.chains_removed) == (1, 1)
        # The first expiry's options and its future (expiring the same day); the index stays.
        assert reply.instruments_unsubscribed == 2 * 5 + 1
        items = {
            i.item_id: i
            for i in (
                await service.stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=alice)
            ).watchlist_items
        }
        gone = items[old.watchlist_item.item_id]
        assert gone.state == pb.WATCHLIST_ITEM_STATE_EVICTED and gone.eviction_reason == pb.EVICTION_REASON_EXPIRED
        assert first in gone.eviction_message and "expired" in gone.eviction_message
        assert items[new.watchlist_item.item_id].state == pb.WATCHLIST_ITEM_STATE_ACTIVE
        resolved = await service.stub.GetTierBPlan(pb.GetTierBPlanRequest(), metadata=service.admin)
        assert [c.expiry_date for c in resolved.resolved_chains] == [second]
        held = await service.rows(
            "SELECT count(*) AS n FROM subscription_owners WHERE owner_id = ANY(%s)",
            [old.watchlist_item.item_id, f"chain:NIFTY:{first}"],
        )
        assert held == [{"n": 0}]
        unsubscribed = await service.stub.ListAuditEntries(
            pb.ListAuditEntriesRequest(action=pb.AUDIT_ACTION_UNSUBSCRIBE), metadata=service.admin
        )
        reasons = {e.reason for e in unsubscribed.audit_entries}
        assert any(r.startswith(f"Tier B NIFTY {first} expired") for r in reasons), reasons
        evicted = await service.stub.ListAuditEntries(
            pb.ListAuditEntriesRequest(action=pb.AUDIT_ACTION_EVICT), metadata=service.admin
        )
        assert [e.item_id for e in evicted.audit_entries] == [old.watchlist_item.item_id]
        again = await service.stub.ReleaseExpired(pb.ReleaseExpiredRequest(trading_date=second), metadata=service.admin)
        assert (again.units_evicted, again.chains_removed, again.instruments_unsubscribed) == (0, 0, 0)
        await invariants(service)
