"""Issue 12's acceptance test: a whole simulated trading day, in seconds, on real parts.

The registry, the subscription service, the scheduler, the feed (a shard and the gateway on
the simulator) and Postgres, with the scheduler on a ManualClock and the subscription
service reading the gateway's snapshot for its live prices. Monday 2026-11-23 (NIFTY's
weekly expiry, moved off the Tuesday holiday): 08:30 reload; 09:00 preload; the simulator
moves NIFTY 2% and the chain re-centres make-before-break; users add and remove items,
with an eviction when full; 15:30 end of day; MCX until its close. Then Wednesday, Tuesday
being a holiday: the master reloads, the expired chain rolls off, ids keep their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from dataserver.scheduler.v1 import scheduler_pb2
from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.clock import ManualClock
from services.common.keys import Key, key_from_proto, key_proto
from services.common.last_prices import GatewayLastPrices, LastQuote
from services.common.market_calendar import IST
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.scheduler_fixtures import SchedulerUnderTest, at, running_scheduler
from tests.subscription_fixtures import SubscriptionUnderTest
from tests.test_simulator import http
from tests.test_subscription_watchlists import invariants

MONDAY, WEDNESDAY = datetime(2026, 11, 23, tzinfo=IST), datetime(2026, 11, 25, tzinfo=IST)
NIFTY: Key = ("IDX_I", 13)
SUCCEEDED = scheduler_pb2.JOB_RUN_OUTCOME_SUCCEEDED
BUDGET = 60  # one connection of 60: the small plan (31) and a few users' units


class GatewayPrices:
    """The gateway's snapshot, bound once the gateway (started after the subscription
    service, which it follows) has an address."""

    def __init__(self) -> None:
        self.gateway: GatewayLastPrices | None = None

    async def last_quote(self, segment: str, security_id: int) -> LastQuote | None:
        return await self.gateway.last_quote(segment, security_id) if self.gateway else None

    async def last_price(self, segment: str, security_id: int) -> float | None:
        quote = await self.last_quote(segment, security_id)
        return quote.price if quote else None


async def tier_b(service: SubscriptionUnderTest) -> dict[str, pb.ResolvedChain]:
    plan = await service.stub.GetTierBPlan(pb.GetTierBPlanRequest(), metadata=service.admin)
    return {c.underlying_symbol: c for c in plan.resolved_chains}


async def subscribed(service: SubscriptionUnderTest, tier: str | None = None) -> set[Key]:
    rows = await service.rows("SELECT exchange_segment, security_id, tier FROM subscriptions")
    return {(r["exchange_segment"], r["security_id"]) for r in rows if tier is None or r["tier"] == tier}


async def recenter_once(scheduler: SchedulerUnderTest) -> scheduler_pb2.JobRun:
    """Moves the clock to the next re-centring run and returns it."""
    done = len(
        [r for r in await scheduler.runs("recenter_chains") if r.outcome != scheduler_pb2.JOB_RUN_OUTCOME_RUNNING]
    )
    scheduler.clock.advance(timedelta(seconds=5))
    return (await scheduler.ended("recenter_chains", done + 1))[-1]


@dataclass
class Day:
    feed: FeedUnderTest
    scheduler: SchedulerUnderTest
    registry: registry_pb2_grpc.RegistryServiceStub
    prices: GatewayPrices

    @property
    def service(self) -> SubscriptionUnderTest:
        return self.feed.subscription

    async def live(self, key: Key, above: float = 0.0) -> float:
        """Waits until the gateway has a last price for `key` above `above`."""

        async def price() -> float | None:
            quote = await self.prices.last_quote(*key)
            return quote.price if quote and quote.price > above else None

        return float(await eventually(price, what=f"a live price of {key} above {above}"))

    async def on_broker(self, count: int) -> None:
        await eventually(lambda: self.feed.subscriptions_on_broker() == [count], what=f"{count} on the broker")

    async def user(self, name: str) -> tuple[tuple[str, str], ...]:
        return await self.service.user(name)


async def test_a_simulated_trading_day(database_url: str, masters_dir: Path) -> None:
    clock = ManualClock(at(MONDAY, 8, 0))
    prices = GatewayPrices()
    async with running_feed(
        database_url,
        masters_dir,
        simulator={"trading_date": MONDAY.date()},
        subscription={"feed_instruments_per_connection": BUDGET, "prices": prices},
    ) as feed:
        service = feed.subscription
        prices.gateway = GatewayLastPrices(feed.gateway.app.address, service.settings.service_token)
        try:
            async with (
                running_scheduler(service, database_url, clock) as scheduler,
                grpc.aio.insecure_channel(service.settings.registry_addr) as channel,
            ):
                day = Day(feed, scheduler, registry_pb2_grpc.RegistryServiceStub(channel), prices)
                await monday_morning(day)
                await monday_session(day)
                await monday_close(day)
                held = await subscribed(service) | await chain_keys(day, "NIFTY")
                before = await meanings(day, held)
                await wednesday(day, before)
        finally:
            await prices.gateway.close()


async def monday_morning(day: Day) -> None:
    """08:30 reload, 09:00 preload with exact counts, the first live price."""
    scheduler, service = day.scheduler, day.service
    scheduler.clock.set(at(MONDAY, 8, 30))
    [reload] = await scheduler.ended("reload_master")
    assert reload.outcome == SUCCEEDED and reload.trading_date == "2026-11-23", reload
    assert reload.counts["master_reloaded"] == 1  # the registry held Friday's master
    assert reload.counts["expired_chains_removed"] == 0 and "instruments_added" not in reload.counts

    scheduler.clock.set(at(MONDAY, 9, 0))
    [preload] = await scheduler.ended("preload_tier_b")
    assert preload.outcome == SUCCEEDED, preload
    # NIFTY and CRUDEOIL: 3 strikes each side of ATM, a call and a put each, the underlying
    # (the NIFTY index, which the plan also names; CRUDEOIL's future) and the future listed for
    # the expiry (NIFTY's of the same day; CRUDEOIL's is its underlying, counted once).
    counts = dict(preload.counts)
    assert (counts["chain:NIFTY"], counts["chain:CRUDEOIL"], counts["instruments"]) == (16, 15, 1)
    assert (counts["instruments_total"], counts["instruments_added"], counts["evictions"]) == (31, 31, 0)
    chains = await tier_b(service)
    assert chains["NIFTY"].expiry_date == "2026-11-23"  # the weekly, moved off Tuesday's holiday
    await day.on_broker(31)
    await day.live(NIFTY)
    # The chains were centred on previous closes (no tick yet at 09:00): the next run
    # centres them on the live price, whatever the hysteresis.
    entry = f"chain:NIFTY:{chains['NIFTY'].expiry_date}"

    async def centred_live() -> bool:
        [row] = await service.rows("SELECT price_source FROM tier_b_entries WHERE entry_id = %s", entry)
        return bool(row["price_source"] == str(registry_pb2.PRICE_SOURCE_LAST_PRICE))

    for _ in range(10):
        if await centred_live():
            break
        run = await recenter_once(scheduler)
        assert run.outcome == SUCCEEDED, run
    assert await centred_live()


async def monday_session(day: Day) -> None:
    """NIFTY moves 2%: its chain re-centres make-before-break within the budget, audited.
    Users add and remove items; one is evicted when the budget is full."""
    scheduler, service = day.scheduler, day.service
    old = (await tier_b(service))["NIFTY"]
    level = await day.live(NIFTY)
    status, moved = await http(day.feed.simulator.control_port, "POST", "/underlyings/index/NIFTY/move", {"percent": 2})
    assert status == 200 and moved["price"] > level * 1.015, moved
    await day.live(NIFTY, above=level * 1.015)
    [mark] = await service.rows("SELECT coalesce(max(version), 0) AS v FROM assignment_changes")
    run = await recenter_once(scheduler)
    assert run.outcome == SUCCEEDED and run.counts["chains_moved"] >= 1, run
    new = (await tier_b(service))["NIFTY"]
    # Up 2%: near the weekly's highest listed strikes, so the window may hold fewer.
    assert new.atm_strike > old.atm_strike * 1.01 and new.instrument_count <= old.instrument_count
    changes = await service.rows(
        "SELECT exchange_segment, security_id, change FROM assignment_changes WHERE version > %s ORDER BY version",
        mark["v"],
    )
    nifty_keys = await chain_keys(day, "NIFTY") | {NIFTY}
    kinds = [c["change"] for c in changes if (c["exchange_segment"], c["security_id"]) in nifty_keys]
    assert "add" in kinds and "remove" in kinds and kinds == sorted(kinds)  # every add before any remove
    audit = await service.stub.ListAuditEntries(
        pb.ListAuditEntriesRequest(action=pb.AUDIT_ACTION_RECENTER, tier=pb.TIER_B), metadata=service.admin
    )
    assert any(
        e.plan_entry_id == new.plan_entry_id
        and (e.old_atm_strike, e.new_atm_strike) == (old.atm_strike, new.atm_strike)
        for e in audit.audit_entries
    ), audit
    await invariants(service)  # within the budget, refs and counts consistent
    tier_b_count = len(await subscribed(service))
    assert tier_b_count == 31 - old.instrument_count + new.instrument_count
    await day.on_broker(tier_b_count)

    # Users: 12-instrument stock units (2 strikes each side, the stock, the expiry's future)
    # beside Tier B; the fourth does not fit in 60.
    alice, bob, carol, dave = [await day.user(n) for n in ("alice", "bob", "carol", "dave")]

    async def add(user: tuple[tuple[str, str], ...], symbol: str) -> pb.AddWatchlistItemResponse:
        request = pb.AddWatchlistItemRequest(symbol=symbol, strikes_each_side=2)
        reply = await service.stub.AddWatchlistItem(request, metadata=user)
        assert reply.watchlist_item.instrument_count == 12, reply
        return reply

    a = await add(alice, "RELIANCE")
    await add(bob, "SBIN")
    await service.stub.RemoveWatchlistItem(
        pb.RemoveWatchlistItemRequest(item_id=a.watchlist_item.item_id), metadata=alice
    )
    assert not (await add(carol, "INFY")).evictions and len(await subscribed(service)) == tier_b_count + 24
    assert tier_b_count + 36 > BUDGET
    d = await add(dave, "TCS")
    # Bob's unit, the least recently used, goes whole; Tier B is never evicted.
    assert [(e.symbol, e.reason) for e in d.evictions] == [("SBIN", pb.EVICTION_REASON_CAPACITY)]
    assert d.evictions[0].user_id == ""  # another user's: dave does not see whose
    states = await service.rows("SELECT user_id, state, eviction_reason FROM watchlist_items ORDER BY item_id")
    assert [(r["user_id"], r["state"], r["eviction_reason"]) for r in states] == [
        ("bob", "EVICTED", "CAPACITY"),
        ("carol", "ACTIVE", None),
        ("dave", "ACTIVE", None),
    ]
    assert len(await subscribed(service)) == tier_b_count + 24 <= BUDGET
    assert len(await subscribed(service, "B")) == tier_b_count
    await invariants(service)
    await day.on_broker(tier_b_count + 24)


async def monday_close(day: Day) -> None:
    """15:30 leaves exactly Tier B; MCX stays until its close (23:55, the US on standard
    time), then goes."""
    scheduler, service = day.scheduler, day.service
    scheduler.clock.set(at(MONDAY, 15, 30))
    [end] = await scheduler.ended("end_of_day")
    assert end.outcome == SUCCEEDED and end.trading_date == "2026-11-23", end
    assert (end.counts["units_unsubscribed"], end.counts["items_deleted"]) == (2, 3)  # carol, dave; and bob's evicted
    tier_b_keys = await subscribed(service, "B")
    assert await subscribed(service) == tier_b_keys
    assert len(tier_b_keys) == sum(c.instrument_count for c in (await tier_b(service)).values())
    assert await service.rows("SELECT owner_id FROM subscription_owners WHERE owner_kind = 'unit'") == []
    await day.on_broker(len(tier_b_keys))

    scheduler.clock.set(at(MONDAY, 23, 30))
    await scheduler.passes()
    assert await scheduler.runs("release_mcx") == [] and set(await tier_b(service)) == {"NIFTY", "CRUDEOIL"}
    scheduler.clock.set(at(MONDAY, 23, 55))
    [release] = await scheduler.ended("release_mcx")
    assert release.outcome == SUCCEEDED and release.counts["mcx_parts_released"] == 1, release
    nifty = (await tier_b(service))["NIFTY"]
    assert set(await tier_b(service)) == {"NIFTY"} and len(await subscribed(service)) == nifty.instrument_count
    await day.on_broker(nifty.instrument_count)
    # Tuesday is an NSE holiday: the next reload and end of day are Wednesday's.
    jobs = {
        j.name: j
        for j in (await scheduler.stub.ListJobs(scheduler_pb2.ListJobsRequest(), metadata=scheduler.admin)).jobs
    }
    assert jobs["reload_master"].next_run_at.ToDatetime(IST) == at(WEDNESDAY, 8, 30)
    assert jobs["end_of_day"].next_run_at.ToDatetime(IST) == at(WEDNESDAY, 15, 30)


async def wednesday(day: Day, before: dict[Key, Any]) -> None:
    """Tuesday is a holiday: Wednesday's 08:30 reload rolls the expired chain off; every id
    still listed means what it meant; the preload brings MCX back."""
    scheduler, service = day.scheduler, day.service
    scheduler.clock.set(at(WEDNESDAY, 8, 30))
    reload = (await scheduler.ended("reload_master", 2))[-1]
    assert reload.outcome == SUCCEEDED and reload.trading_date == "2026-11-25", reload
    assert reload.counts["master_reloaded"] == 1 and reload.counts["expired_chains_removed"] == 1
    assert reload.counts["chain:NIFTY"] > 0  # rolled to the next expiry
    nse = {(r.job_name, r.trading_date) for r in await scheduler.runs() if r.job_name != "release_mcx"}
    assert ("reload_master", "2026-11-24") not in nse and ("end_of_day", "2026-11-24") not in nse
    rolled = (await tier_b(service))["NIFTY"]
    assert rolled.expiry_date > "2026-11-25"
    reasons = {
        e.reason
        for e in (
            await service.stub.ListAuditEntries(
                pb.ListAuditEntriesRequest(action=pb.AUDIT_ACTION_UNSUBSCRIBE, tier=pb.TIER_B, page_size=1000),
                metadata=service.admin,
            )
        ).audit_entries
    }
    assert any(r.startswith("Tier B NIFTY 2026-11-23 expired") for r in reasons), reasons

    after = await meanings(day, set(before))
    expired = {k for k, v in after.items() if v is None}
    assert expired and all(before[k][2] == "2026-11-23" for k in expired)  # only the expired went
    assert all(after[k] == before[k] for k in set(before) - expired)  # the rest kept their meaning
    assert None not in (await meanings(day, await subscribed(service))).values()  # nothing unlisted held

    scheduler.clock.set(at(WEDNESDAY, 9, 0))
    preload = (await scheduler.ended("preload_tier_b", 2))[-1]
    assert preload.outcome == SUCCEEDED and preload.trading_date == "2026-11-25", preload
    assert preload.counts["chain:CRUDEOIL"] == 15 and preload.counts["evictions"] == 0
    chains = await tier_b(service)
    assert set(chains) == {"NIFTY", "CRUDEOIL"}
    assert (
        len(await subscribed(service))
        == preload.counts["instruments_total"]
        == sum(c.instrument_count for c in chains.values())
    )
    await invariants(service)


async def chain_keys(day: Day, symbol: str) -> set[Key]:
    """Every listed option of the symbol's two nearest expiries (ids beyond any window too)."""
    admin = day.service.admin
    expiries = await day.registry.ListExpiries(
        registry_pb2.ListExpiriesRequest(underlying_symbol=symbol, kind=registry_pb2.DERIVATIVE_KIND_OPTIONS),
        metadata=admin,
    )
    keys: set[Key] = set()
    for expiry in expiries.expiries[:2]:
        chain = await day.registry.GetOptionChain(
            registry_pb2.GetOptionChainRequest(
                underlying_symbol=symbol, expiry_date=expiry.expiry_date, strikes_each_side=100, use_last_price=True
            ),
            metadata=admin,
        )
        keys |= {key_from_proto(o.key) for s in chain.strikes for o in (s.call, s.put) if o.HasField("key")}
    return keys


async def meanings(day: Day, keys: set[Key]) -> dict[Key, Any]:
    """What each id is in the master loaded now (None: not listed)."""
    found: dict[Key, Any] = {}
    for key in sorted(keys):
        try:
            reply = await day.registry.GetInstrument(
                registry_pb2.GetInstrumentRequest(key=key_proto(key)), metadata=day.service.admin
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            found[key] = None
            continue
        i = reply.instrument
        found[key] = (i.trading_symbol, i.underlying_symbol, i.expiry_date, i.strike_price, i.option_type)
    return found
