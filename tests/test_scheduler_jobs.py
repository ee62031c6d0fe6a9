"""Each scheduled job's effect on the real registry and subscription service, on a ManualClock
moved through a trading day and into the next."""

from __future__ import annotations

from pathlib import Path

from dataserver.scheduler.v1 import scheduler_pb2 as pb
from dataserver.subscription.v1 import subscription_pb2 as sub_pb

from services.common.clock import ManualClock
from tests.scheduler_fixtures import FRIDAY, MONDAY, at, running_scheduler
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription
from tests.test_subscription_day import FixedPrices

SUCCEEDED = pb.JOB_RUN_OUTCOME_SUCCEEDED


async def tier_b_symbols(subscription: SubscriptionUnderTest) -> set[str]:
    plan = await subscription.stub.GetTierBPlan(sub_pb.GetTierBPlanRequest(), metadata=subscription.admin)
    return {c.underlying_symbol for c in plan.resolved_chains}


async def test_a_trading_day_runs_itself(database_url: str, masters_dir: Path) -> None:
    clock = ManualClock(at(FRIDAY, 8, 0))
    prices = FixedPrices()
    async with (
        running_subscription(database_url, masters_dir, prices=prices) as subscription,
        running_scheduler(subscription, database_url, clock) as scheduler,
    ):
        await scheduler.passes()
        assert await scheduler.runs() == []  # nothing is owed at 08:00

        clock.set(at(FRIDAY, 8, 30))
        [reload] = await scheduler.ended("reload_master")
        assert reload.outcome == SUCCEEDED and reload.trigger == pb.JOB_TRIGGER_SCHEDULE, reload
        assert reload.trading_date == "2026-11-20" and reload.counts["master_rows"] > 0
        assert reload.counts["master_reloaded"] == 0  # the registry has loaded that day's master since 08:30
        assert "instruments_added" not in reload.counts  # no plan in force yet: nothing re-applied

        clock.set(at(FRIDAY, 9, 0))
        [preload] = await scheduler.ended("preload_tier_b")
        assert preload.outcome == SUCCEEDED, preload
        counts = preload.counts
        assert counts["instruments_total"] == counts["instruments_added"] > 0
        # 7 strikes x CE/PE and the underlying; NIFTY's monthly expiry lists its future too
        # (CRUDEOIL's is its underlying).
        assert counts["chain:NIFTY"] == 7 * 2 + 2 and counts["chain:CRUDEOIL"] == 7 * 2 + 1
        assert counts["instruments"] == 1
        assert await tier_b_symbols(subscription) == {"NIFTY", "CRUDEOIL"}

        recentered = len(await scheduler.ended("recenter_chains"))  # it runs from 09:00 too

        # A unit centred away from the price (on a caller's price) re-centres on the next run,
        # which needs a live price (none so far: the runs skip every chain).
        alice = await subscription.user("alice")
        near = await subscription.stub.AddWatchlistItem(
            sub_pb.AddWatchlistItemRequest(symbol="NIFTY", strikes_each_side=2), metadata=alice
        )
        await subscription.stub.RemoveWatchlistItem(
            sub_pb.RemoveWatchlistItemRequest(item_id=near.watchlist_item.item_id), metadata=alice
        )
        atm = near.watchlist_item.atm_strike
        away = await subscription.stub.AddWatchlistItem(
            sub_pb.AddWatchlistItemRequest(symbol="NIFTY", strikes_each_side=2, underlying_price=atm * 1.04),
            metadata=alice,
        )
        assert away.watchlist_item.atm_strike > atm
        prices.prices[("IDX_I", 13)] = near.watchlist_item.underlying_price  # the previous close, now live
        clock.set(at(FRIDAY, 9, 0, 5))
        recenter = (await scheduler.ended("recenter_chains", recentered + 1))[-1]
        assert recenter.outcome == SUCCEEDED and recenter.counts["chains_moved"] == 1, recenter
        assert recenter.trading_date == ""  # not a dated job
        items = await subscription.stub.ListWatchlistItems(sub_pb.ListWatchlistItemsRequest(), metadata=alice)
        assert [i.atm_strike for i in items.watchlist_items] == [atm]

        # 15:30: Tier A cleared, Tier B kept.
        clock.set(at(FRIDAY, 15, 30))
        [end] = await scheduler.ended("end_of_day")
        assert end.outcome == SUCCEEDED and end.counts["units_unsubscribed"] == 1, end
        items = await subscription.stub.ListWatchlistItems(sub_pb.ListWatchlistItemsRequest(), metadata=alice)
        assert list(items.watchlist_items) == []
        assert await tier_b_symbols(subscription) == {"NIFTY", "CRUDEOIL"}

        # MCX stays until its close: 23:55 in November, the US being on standard time.
        clock.set(at(FRIDAY, 23, 30))
        await scheduler.passes()
        assert await scheduler.runs("release_mcx") == []
        clock.set(at(FRIDAY, 23, 55))
        [release] = await scheduler.ended("release_mcx")
        assert release.outcome == SUCCEEDED and release.counts["mcx_parts_released"] == 1, release
        assert await tier_b_symbols(subscription) == {"NIFTY"}

        # The next trading day: the master for Monday, the plan in force re-applied, then the
        # preload brings MCX back.
        clock.set(at(MONDAY, 8, 30))
        reloads = await scheduler.ended("reload_master", 2)
        assert reloads[-1].trading_date == "2026-11-23" and reloads[-1].outcome == SUCCEEDED, reloads[-1]
        assert reloads[-1].counts["master_reloaded"] == 1
        assert reloads[-1].counts["chain:NIFTY"] > 0 and "chain:CRUDEOIL" not in reloads[-1].counts
        clock.set(at(MONDAY, 9, 0))
        await scheduler.ended("preload_tier_b", 2)
        assert await tier_b_symbols(subscription) == {"NIFTY", "CRUDEOIL"}
        dated = [(r.job_name, r.trading_date) for r in await scheduler.runs() if r.trading_date]
        assert len(dated) == len(set(dated)) == 6  # each dated job once per trading date
