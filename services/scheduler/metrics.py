"""The scheduler's Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

# `job_name`, not `job`: Prometheus sets `job` on every scraped series (the scrape job).
RUNS = Counter("scheduler_job_runs_total", "Job runs ended, by job and outcome.", ["job_name", "outcome"])
RUN_SECONDS = Histogram(
    "scheduler_job_run_seconds",
    "How long job runs took, by job.",
    ["job_name"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
# Not `_count`: that suffix belongs to histograms and summaries.
RUN_COUNTS = Gauge(
    "scheduler_job_last_run_items", "The counts of each job's last run (e.g. instruments_total).", ["job_name", "count"]
)
LAST_RUN = Gauge(
    "scheduler_job_last_run_timestamp_seconds",
    "When each job's last run ended, by outcome (Unix time).",
    ["job_name", "outcome"],
)
LEADER = Gauge("scheduler_leader", "1 while this replica holds the leader lock and fires schedules.")


def record_run(job: str, outcome: str, seconds: float, counts: Mapping[str, int]) -> None:
    RUNS.labels(job, outcome).inc()
    RUN_SECONDS.labels(job).observe(seconds)
    LAST_RUN.labels(job, outcome).set(time.time())
    for name, value in counts.items():
        RUN_COUNTS.labels(job, name).set(value)
