"""The subscription side of the trading day (issue 12): end of day by content and after the
close, Tier B chains centred on a real price, the seeds' plan capped by the listing, MCX
futures, and who may re-centre what."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import grpc
from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.clock import ManualClock
from services.common.keys import Key
from services.common.market_calendar import IST
from services.scheduler.plan import default_plan, without_mcx
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription
from tests.test_subscription_watchlists import expect, invariants

NIFTY_INDEX = common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_IDX_I, security_id=13)


class FixedPrices:
    """The feed's last prices, as a test sets them (a zero is what a gateway never sends on)."""

    def __init__(self) -> None:
        self.prices: dict[Key, float] = {}

    async def last_price(self, segment: str, security_id: int) -> float | None:
        return self.prices.get((segment, security_id))


async def add(service: SubscriptionUnderTest, user: str, symbol: str) -> pb.AddWatchlistItemResponse:
    return await service.stub.AddWatchlistItem(
        pb.AddWatchlistItemRequest(symbol=symbol, strikes_each_side=2), metadata=await service.user(user)
    )


async def test_end_of_day_clears_what_exists_and_waits_for_the_close(database_url: str, masters_dir: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 20, 10, 27, tzinfo=IST))
    async with running_subscription(database_url, masters_dir, clock=clock) as service:
        await service.stub.SetTierBPlan(
            pb.SetTierBPlanRequest(instruments=[pb.TierBInstrument(key=NIFTY_INDEX)]), metadata=service.admin
        )
        await add(service, "alice", "RELIANCE")
        details = await expect(
            service.stub.EndOfDay(pb.EndOfDayRequest(), metadata=service.admin), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert "15:30 IST" in details and "2026-11-20" in details and "force" in details
        assert len(await service.rows("SELECT item_id FROM watchlist_items")) == 1  # refused: nothing changed
        early = await service.stub.EndOfDay(pb.EndOfDayRequest(force=True), metadata=service.admin)
        assert (early.trading_date, early.already_done, early.units_unsubscribed) == ("2026-11-20", False, 1)
        late = await add(service, "bob", "SBIN")  # after the manual run: the 15:30 run still clears it
        assert late.created
        clock.set(datetime(2026, 11, 20, 15, 30, tzinfo=IST))
        close = await service.stub.EndOfDay(pb.EndOfDayRequest(), metadata=service.admin)
        assert (close.already_done, close.units_unsubscribed, close.items_deleted, close.users_affected) == (
            True,
            1,
            1,
            1,
        )
        rows = await service.rows("SELECT tier, security_id FROM subscriptions")
        assert [(r["tier"], r["security_id"]) for r in rows] == [("B", 13)]
        assert await service.rows("SELECT item_id FROM watchlist_items") == []
        # A later date is before its close too.
        await expect(
            service.stub.EndOfDay(pb.EndOfDayRequest(trading_date="2026-11-23"), metadata=service.admin),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        await invariants(service)


async def test_tier_b_chains_centre_on_the_last_price_else_the_previous_close(
    database_url: str, masters_dir: Path
) -> None:
    prices = FixedPrices()
    async with (
        running_subscription(database_url, masters_dir, prices=prices) as service,
        grpc.aio.insecure_channel(service.settings.registry_addr) as channel,
    ):
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        close = (
            await registry.GetInstrument(registry_pb2.GetInstrumentRequest(key=NIFTY_INDEX), metadata=service.admin)
        ).instrument.previous_close
        assert close > 0

        async def atm_at(price: float, expiry: str) -> float:
            chain = await registry.GetOptionChain(
                registry_pb2.GetOptionChainRequest(
                    underlying_symbol="NIFTY", expiry_date=expiry, strikes_each_side=2, underlying_price=price
                ),
                metadata=service.admin,
            )
            return chain.atm_strike

        chain = pb.TierBChain(
            underlying_symbol="NIFTY", nearest_expiries=1, strikes_each_side=2, include_underlying=True
        )
        prices.prices[("IDX_I", 13)] = 0.0  # before the first tick: never centred on 0
        before = (
            await service.stub.SetTierBPlan(pb.SetTierBPlanRequest(chains=[chain]), metadata=service.admin)
        ).chains
        expiry = before[0].expiry_date
        assert before[0].atm_strike == await atm_at(close, expiry) > 0
        prices.prices[("IDX_I", 13)] = close * 1.02  # the first live price
        after = await service.stub.SetTierBPlan(pb.SetTierBPlanRequest(chains=[chain]), metadata=service.admin)
        assert after.chains[0].atm_strike == await atm_at(close * 1.02, expiry) > before[0].atm_strike
        # The index, 2 strikes each side x CE/PE, and the expiry's future: the index and the
        # future stay as the window moves.
        assert after.instrument_count == 1 + 2 * 5 + 1 and after.instruments_added == after.instruments_removed > 0
        assert after.instruments_kept == 2
        # Tier B chains are re-centred by admins only.
        ref = pb.TierBChainRef(underlying_symbol="NIFTY", expiry_date=expiry)
        await expect(
            service.stub.RecenterChain(pb.RecenterChainRequest(tier_b_chain=ref), metadata=await service.user("alice")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await invariants(service)


async def test_the_seeds_plan_takes_every_listed_expiry_up_to_its_count(database_url: str, masters_dir: Path) -> None:
    async with (
        running_subscription(database_url, masters_dir) as service,
        grpc.aio.insecure_channel(service.settings.registry_addr) as channel,
    ):
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        listed: dict[str, int] = {}
        for chain in default_plan().chains:
            try:
                reply = await registry.ListExpiries(
                    registry_pb2.ListExpiriesRequest(
                        underlying_symbol=chain.underlying_symbol, kind=registry_pb2.DERIVATIVE_KIND_OPTIONS
                    ),
                    metadata=service.admin,
                )
            except grpc.aio.AioRpcError:
                continue  # the small master lacks it
            listed[chain.underlying_symbol] = len(reply.expiries)
        plan = default_plan(set(listed))
        assert "NIFTY" in listed and "CRUDEOIL" in listed
        applied = await service.stub.SetTierBPlan(plan, metadata=service.admin)
        for chain in plan.chains:
            resolved = [c for c in applied.chains if c.underlying_symbol == chain.underlying_symbol]
            assert len(resolved) == min(chain.nearest_expiries, listed[chain.underlying_symbol])
            assert all(c.strikes_each_side == 10 for c in resolved)
        assert applied.instrument_count == applied.instruments_added > 0
        tier_b = await service.rows("SELECT count(*) AS n FROM subscriptions WHERE tier = 'B'")
        assert tier_b[0]["n"] == applied.instrument_count
        # After the MCX close the plan goes again without its MCX parts.
        released = await service.stub.SetTierBPlan(without_mcx(plan), metadata=service.admin)
        mcx = await service.rows("SELECT count(*) AS n FROM subscriptions WHERE exchange_segment = 'MCX_COMM'")
        assert mcx[0]["n"] == 0 and released.instruments_removed > 0
        await invariants(service)


async def test_commodity_chains_take_their_nearest_futures(database_url: str, masters_dir: Path) -> None:
    async with (
        running_subscription(database_url, masters_dir) as service,
        grpc.aio.insecure_channel(service.settings.registry_addr) as channel,
    ):
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        futures = await registry.ListExpiries(
            registry_pb2.ListExpiriesRequest(underlying_symbol="CRUDEOIL", kind=registry_pb2.DERIVATIVE_KIND_FUTURES),
            metadata=service.admin,
        )
        assert len(futures.expiries) >= 2
        crude = pb.TierBChain(
            underlying_symbol="CRUDEOIL", nearest_expiries=1, strikes_each_side=3, include_underlying=True
        )
        alone = await service.stub.SetTierBPlan(
            pb.SetTierBPlanRequest(chains=[crude], dry_run=True), metadata=service.admin
        )
        crude.nearest_futures = 2
        both = await service.stub.SetTierBPlan(pb.SetTierBPlanRequest(chains=[crude]), metadata=service.admin)
        assert alone.instrument_count == alone.chains[0].instrument_count == 1 + 2 * 7
        assert both.instrument_count == alone.instrument_count + 1  # the near future is the chain's underlying
        rows = await service.rows(
            "SELECT DISTINCT i.expiry_date FROM subscriptions s "
            "JOIN subscription_owners o USING (exchange_segment, security_id) "
            "JOIN instruments i USING (exchange_segment, security_id) "
            "WHERE o.owner_id LIKE 'instrument:MCX_COMM:%%' ORDER BY 1"
        )
        assert [r["expiry_date"].isoformat() for r in rows] == [e.expiry_date for e in futures.expiries[:2]]


async def test_nearest_expiries_accepts_what_is_listed_up_to_a_bound(database_url: str, masters_dir: Path) -> None:
    async with running_subscription(database_url, masters_dir) as service:
        many = pb.TierBChain(underlying_symbol="NIFTY", nearest_expiries=51, strikes_each_side=1)
        details = await expect(
            service.stub.SetTierBPlan(pb.SetTierBPlanRequest(chains=[many], dry_run=True), metadata=service.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "1..50" in details
        many.nearest_expiries = 50
        capped = await service.stub.SetTierBPlan(
            pb.SetTierBPlanRequest(chains=[many], dry_run=True), metadata=service.admin
        )
        assert 12 >= len(capped.chains) > 1  # all the small master lists
