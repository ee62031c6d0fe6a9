"""Run records and jobs as the contract's messages, and the contract's enums as stored text."""

from __future__ import annotations

from datetime import datetime

from dataserver.scheduler.v1 import scheduler_pb2 as pb

from services.scheduler.catalog import JobSpec
from services.scheduler.runs import Row

OUTCOMES: dict[str, pb.JobRunOutcome] = {
    "running": pb.JOB_RUN_OUTCOME_RUNNING,
    "succeeded": pb.JOB_RUN_OUTCOME_SUCCEEDED,
    "failed": pb.JOB_RUN_OUTCOME_FAILED,
    "skipped": pb.JOB_RUN_OUTCOME_SKIPPED,
}
TRIGGERS: dict[str, pb.JobTrigger] = {
    "schedule": pb.JOB_TRIGGER_SCHEDULE,
    "manual": pb.JOB_TRIGGER_MANUAL,
    "startup": pb.JOB_TRIGGER_STARTUP,
}
OUTCOME_NAMES = {value: name for name, value in OUTCOMES.items()}
TRIGGER_NAMES = {value: name for name, value in TRIGGERS.items()}


def run_proto(row: Row) -> pb.JobRun:
    run = pb.JobRun(
        run_id=str(row["run_id"]),
        job_name=row["job_name"],
        outcome=OUTCOMES[row["outcome"]],
        trigger=TRIGGERS[row["trigger"]],
        counts={name: int(value) for name, value in row["counts"].items()},
        error_message=row["error"],
        replica_id=row["replica_id"],
        actor=row["actor"],
        trading_date=row["trading_date"].isoformat() if row["trading_date"] else "",
    )
    run.started_at.FromDatetime(row["started_at"])
    if row["finished_at"] is not None:
        run.finished_at.FromDatetime(row["finished_at"])
    return run


def job_proto(spec: JobSpec, last: Row | None, next_run: datetime | None, *, leader: bool) -> pb.Job:
    job = pb.Job(
        name=spec.name,
        description=spec.description,
        schedule=spec.schedule.describe(),
        enabled=spec.enabled,
        leader=leader,
    )
    if next_run is not None:
        job.next_run_at.FromDatetime(next_run)
    if last is not None:
        job.last_run_at.FromDatetime(last["started_at"])
        job.last_outcome = OUTCOMES[last["outcome"]]
        job.last_run_id = str(last["run_id"])
    return job
