"""Exactly once: a dated job runs on schedule at most once per trading date, across restarts
and replicas; a scheduler that starts late catches up once, within the misfire grace; a
failed or abandoned run gives its date back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest_asyncio
from dataserver.scheduler.v1 import scheduler_pb2 as pb
from dataserver.subscription.v1 import subscription_pb2 as sub_pb

from services.common.clock import ManualClock
from tests.feed_fixtures import eventually
from tests.scheduler_fixtures import FRIDAY, MONDAY, at, only, running_scheduler
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription

EOD_ONLY = only("end_of_day")


async def add_item(subscription: SubscriptionUnderTest) -> None:
    await subscription.stub.AddWatchlistItem(
        sub_pb.AddWatchlistItemRequest(symbol="NIFTY", strikes_each_side=1), metadata=await subscription.user("alice")
    )


async def alice_items(subscription: SubscriptionUnderTest) -> int:
    reply = await subscription.stub.ListWatchlistItems(
        sub_pb.ListWatchlistItemsRequest(), metadata=await subscription.user("alice")
    )
    return len(reply.watchlist_items)


@pytest_asyncio.fixture(loop_scope="session")
async def subscription(database_url: str, masters_dir: Path):
    async with running_subscription(database_url, masters_dir) as running:
        yield running


async def test_a_scheduler_down_at_1530_ends_the_day_once_when_it_starts_at_1545(
    subscription: SubscriptionUnderTest, database_url: str
) -> None:
    await add_item(subscription)
    clock = ManualClock(at(FRIDAY, 15, 45))
    async with running_scheduler(subscription, database_url, clock, scheduler_disabled_jobs=EOD_ONLY) as scheduler:
        [run] = await scheduler.ended("end_of_day")
        assert run.trigger == pb.JOB_TRIGGER_STARTUP and run.outcome == pb.JOB_RUN_OUTCOME_SUCCEEDED, run
        assert run.trading_date == "2026-11-20" and run.replica_id == "replica-a"
        assert await alice_items(subscription) == 0
    await add_item(subscription)  # added after the day ended: no second run clears it
    clock.set(at(FRIDAY, 15, 50))
    async with running_scheduler(
        subscription, database_url, clock, scheduler_disabled_jobs=EOD_ONLY, scheduler_replica_id="replica-b"
    ) as scheduler:
        await scheduler.passes()
        assert len(await scheduler.runs("end_of_day")) == 1
        assert await alice_items(subscription) == 1


async def test_a_scheduled_run_is_not_repeated_by_a_restart(
    subscription: SubscriptionUnderTest, database_url: str
) -> None:
    clock = ManualClock(at(FRIDAY, 15, 29))
    async with running_scheduler(subscription, database_url, clock, scheduler_disabled_jobs=EOD_ONLY) as scheduler:
        await scheduler.passes()
        assert await scheduler.runs() == []
        clock.set(at(FRIDAY, 15, 30))
        [run] = await scheduler.ended("end_of_day")
        assert run.trigger == pb.JOB_TRIGGER_SCHEDULE
    clock.set(at(FRIDAY, 15, 31))
    async with running_scheduler(subscription, database_url, clock, scheduler_disabled_jobs=EOD_ONLY) as scheduler:
        await scheduler.passes()
        assert len(await scheduler.runs()) == 1


async def test_a_start_past_the_misfire_grace_does_not_catch_up(
    subscription: SubscriptionUnderTest, database_url: str
) -> None:
    clock = ManualClock(at(FRIDAY, 16, 1))
    async with running_scheduler(
        subscription, database_url, clock, scheduler_disabled_jobs=EOD_ONLY, scheduler_misfire_grace_seconds=1800.0
    ) as scheduler:
        await scheduler.passes()
        assert await scheduler.runs() == []
        jobs = await scheduler.stub.ListJobs(pb.ListJobsRequest(), metadata=scheduler.admin)
        [end] = [j for j in jobs.jobs if j.name == "end_of_day"]
        assert end.next_run_at.ToDatetime().isoformat() == "2026-11-23T10:00:00"  # Monday 15:30 IST


async def test_only_the_leader_fires_and_a_follower_takes_over(
    subscription: SubscriptionUnderTest, database_url: str
) -> None:
    clock = ManualClock(at(FRIDAY, 15, 45))
    async with running_scheduler(subscription, database_url, clock, scheduler_disabled_jobs=EOD_ONLY) as first:
        async with running_scheduler(
            subscription,
            database_url,
            clock,
            lead=False,
            scheduler_disabled_jobs=EOD_ONLY,
            scheduler_replica_id="replica-b",
        ) as second:
            [run] = await first.ended("end_of_day")
            assert run.replica_id == "replica-a"
            reply = await second.stub.ListJobs(pb.ListJobsRequest(), metadata=second.admin)
            assert reply.replica_id == "replica-b" and reply.leader_replica_id == "replica-a"
            assert not any(job.leader for job in reply.jobs)
            await first.scheduler.app.stop()
            await eventually(lambda: second.scheduler.leader.is_leader, what="the follower leading")
            clock.set(at(MONDAY, 15, 30))
            runs = await second.ended("end_of_day", 2)
            assert [(r.replica_id, r.trading_date) for r in runs] == [
                ("replica-a", "2026-11-20"),
                ("replica-b", "2026-11-23"),
            ]


async def test_a_failed_run_is_retried_and_an_abandoned_one_is_taken_over(
    subscription: SubscriptionUnderTest, database_url: str
) -> None:
    clock = ManualClock(at(FRIDAY, 15, 45))
    async with running_scheduler(
        subscription, database_url, clock, scheduler_disabled_jobs=EOD_ONLY, subscription_addr="127.0.0.1:1"
    ) as scheduler:
        [failed] = await scheduler.ended("end_of_day")
        assert failed.outcome == pb.JOB_RUN_OUTCOME_FAILED and "unavailable" in failed.error_message, failed
        clock.advance(timedelta(seconds=60))  # the retry interval
        runs = await scheduler.ended("end_of_day", 2)
        assert [r.outcome for r in runs] == [pb.JOB_RUN_OUTCOME_FAILED] * 2
    # A replica killed mid-run leaves its run 'running': the next one to take the job's lock
    # marks it abandoned and runs the job.
    await subscription.rows(
        "INSERT INTO job_runs (job_name, trading_date, trigger, outcome, started_at, replica_id) "
        "VALUES ('end_of_day', '2026-11-20', 'schedule', 'running', now(), 'replica-dead') RETURNING run_id"
    )
    clock.advance(timedelta(seconds=60))
    async with running_scheduler(subscription, database_url, clock, scheduler_disabled_jobs=EOD_ONLY) as scheduler:
        runs = await scheduler.ended("end_of_day", 4)
        assert runs[2].replica_id == "replica-dead" and "abandoned" in runs[2].error_message
        assert runs[3].outcome == pb.JOB_RUN_OUTCOME_SUCCEEDED and runs[3].trigger == pb.JOB_TRIGGER_STARTUP
