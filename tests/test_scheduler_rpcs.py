"""SchedulerService: ListJobs, RunJob and ListJobRuns, their errors, and the run metrics."""

from __future__ import annotations

from pathlib import Path

import grpc
import psycopg
from dataserver.scheduler.v1 import scheduler_pb2 as pb
from prometheus_client import REGISTRY

from services.common.clock import ManualClock
from services.scheduler.runs import job_lock_key
from tests.registry_fixtures import expect_status
from tests.scheduler_fixtures import FRIDAY, at, only, running_scheduler
from tests.subscription_fixtures import running_subscription

JOBS = ["end_of_day", "preload_tier_b", "recenter_chains", "release_mcx", "reload_master"]


def runs_metric(job: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("scheduler_job_runs_total", {"job_name": job, "outcome": outcome}) or 0.0


async def test_list_jobs_gives_next_run_times_and_the_leader(database_url: str, masters_dir: Path) -> None:
    clock = ManualClock(at(FRIDAY, 7, 0))  # nothing owed, nothing due yet
    async with (
        running_subscription(database_url, masters_dir) as subscription,
        running_scheduler(subscription, database_url, clock, scheduler_disabled_jobs=("release_mcx",)) as scheduler,
    ):
        reply = await scheduler.stub.ListJobs(pb.ListJobsRequest(), metadata=scheduler.admin)
        assert [j.name for j in reply.jobs] == JOBS and reply.next_page_token == ""
        assert reply.replica_id == reply.leader_replica_id == "replica-a"
        assert all(j.leader for j in reply.jobs)
        next_runs = {j.name: j.next_run_at.ToDatetime().strftime("%d %H:%M:%S") for j in reply.jobs if j.enabled}
        # UTC: IST minus 05:30.
        assert next_runs == {
            "reload_master": "20 03:00:00",
            "preload_tier_b": "20 03:30:00",
            "recenter_chains": "20 03:30:00",
            "end_of_day": "20 10:00:00",
        }
        [mcx] = [j for j in reply.jobs if j.name == "release_mcx"]
        assert not mcx.enabled and not mcx.HasField("next_run_at")
        assert "30 23" in mcx.schedule and "55 23" in mcx.schedule

        first = await scheduler.stub.ListJobs(pb.ListJobsRequest(page_size=2), metadata=scheduler.admin)
        second = await scheduler.stub.ListJobs(
            pb.ListJobsRequest(page_size=2, page_token=first.next_page_token), metadata=scheduler.admin
        )
        assert [j.name for j in [*first.jobs, *second.jobs]] == JOBS[:4]


async def test_run_job_checks_its_caller_and_the_job(database_url: str, masters_dir: Path) -> None:
    clock = ManualClock(at(FRIDAY, 7, 0))
    async with (
        running_subscription(database_url, masters_dir) as subscription,
        running_scheduler(subscription, database_url, clock, scheduler_disabled_jobs=only()) as scheduler,
    ):
        stub, admin = scheduler.stub, scheduler.admin
        user = await subscription.user("alice")
        denied = stub.RunJob(pb.RunJobRequest(name="end_of_day"), metadata=user)
        await expect_status(denied, grpc.StatusCode.PERMISSION_DENIED)
        unknown = stub.RunJob(pb.RunJobRequest(name="end_of_week"), metadata=admin)
        named = await expect_status(unknown, grpc.StatusCode.NOT_FOUND)
        assert all(j in named for j in JOBS)
        early = stub.RunJob(pb.RunJobRequest(name="end_of_day"), metadata=admin)
        assert "15:30" in await expect_status(early, grpc.StatusCode.FAILED_PRECONDITION)

        before = runs_metric("end_of_day", "succeeded")
        forced = await stub.RunJob(pb.RunJobRequest(name="end_of_day", force=True), metadata=admin)
        assert forced.outcome == pb.JOB_RUN_OUTCOME_SUCCEEDED and forced.run.trigger == pb.JOB_TRIGGER_MANUAL
        assert forced.run.actor == "admin:ops" and forced.run.trading_date == "2026-11-20"
        assert forced.run_id == forced.run.run_id and forced.run.HasField("finished_at")
        assert runs_metric("end_of_day", "succeeded") == before + 1

        # Held by another replica's run: the job's lock is taken.
        async with await psycopg.AsyncConnection.connect(database_url) as other, other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock(%s)", (job_lock_key("end_of_day"),))
            busy = stub.RunJob(pb.RunJobRequest(name="end_of_day", force=True), metadata=admin)
            assert "already running" in await expect_status(busy, grpc.StatusCode.FAILED_PRECONDITION)

        clock.set(at(FRIDAY.replace(day=21), 10, 0))  # a Saturday
        skipped = await stub.RunJob(pb.RunJobRequest(name="preload_tier_b"), metadata=admin)
        assert skipped.outcome == pb.JOB_RUN_OUTCOME_SKIPPED and "not a trading day" in skipped.run.error_message
        outside = await stub.RunJob(pb.RunJobRequest(name="recenter_chains"), metadata=admin)
        assert outside.outcome == pb.JOB_RUN_OUTCOME_SKIPPED and "market hours" in outside.run.error_message


async def test_a_manual_run_does_not_stand_in_for_the_scheduled_one(database_url: str, masters_dir: Path) -> None:
    clock = ManualClock(at(FRIDAY, 10, 27))
    async with (
        running_subscription(database_url, masters_dir) as subscription,
        running_scheduler(subscription, database_url, clock, scheduler_disabled_jobs=only("end_of_day")) as scheduler,
    ):
        await scheduler.stub.RunJob(pb.RunJobRequest(name="end_of_day", force=True), metadata=scheduler.admin)
        clock.set(at(FRIDAY, 15, 30))
        runs = await scheduler.ended("end_of_day", 2)
        assert [r.trigger for r in runs] == [pb.JOB_TRIGGER_MANUAL, pb.JOB_TRIGGER_SCHEDULE]


async def test_list_job_runs_pages_newest_first_with_filters(database_url: str, masters_dir: Path) -> None:
    clock = ManualClock(at(FRIDAY, 16, 0))
    async with (
        running_subscription(database_url, masters_dir) as subscription,
        running_scheduler(subscription, database_url, clock, scheduler_disabled_jobs=only()) as scheduler,
    ):
        stub, admin = scheduler.stub, scheduler.admin
        for name in ("end_of_day", "end_of_day", "release_mcx", "end_of_day"):
            await stub.RunJob(pb.RunJobRequest(name=name), metadata=admin)
        seen, tokens, token = [], [], ""
        while True:
            page = await stub.ListJobRuns(
                pb.ListJobRunsRequest(job_name="end_of_day", page_size=2, page_token=token), metadata=admin
            )
            seen += [int(r.run_id) for r in page.job_runs]
            # A run recorded between pages neither repeats nor shifts the next page.
            await stub.RunJob(pb.RunJobRequest(name="release_mcx"), metadata=admin)
            token = page.next_page_token
            if not token:
                break
            tokens.append(token)
        assert len(seen) == 3 and seen == sorted(seen, reverse=True) and len(tokens) == 1
        succeeded = await stub.ListJobRuns(
            pb.ListJobRunsRequest(outcome=pb.JOB_RUN_OUTCOME_SUCCEEDED, trigger=pb.JOB_TRIGGER_MANUAL), metadata=admin
        )
        assert [r.job_name for r in succeeded.job_runs] == ["end_of_day"] * 3
        skipped = await stub.ListJobRuns(pb.ListJobRunsRequest(outcome=pb.JOB_RUN_OUTCOME_SKIPPED), metadata=admin)
        assert [r.job_name for r in skipped.job_runs] == ["release_mcx"] * 3  # no MCX in the plan in force
        assert "no MCX" in skipped.job_runs[0].error_message
        dated = await stub.ListJobRuns(pb.ListJobRunsRequest(trading_date="2026-11-19"), metadata=admin)
        assert list(dated.job_runs) == []

        unknown = stub.ListJobRuns(pb.ListJobRunsRequest(job_name="nope"), metadata=admin)
        assert "end_of_day" in await expect_status(unknown, grpc.StatusCode.NOT_FOUND)
        for request in (
            pb.ListJobRunsRequest(page_token="zzz"),
            pb.ListJobRunsRequest(job_name="release_mcx", page_size=2, page_token=tokens[0]),  # another query's
            pb.ListJobRunsRequest(trading_date="20-11-2026"),
            pb.ListJobRunsRequest(page_size=-1),
        ):
            await expect_status(stub.ListJobRuns(request, metadata=admin), grpc.StatusCode.INVALID_ARGUMENT)
