-- The scheduler's run records (job_runs), owned by services/scheduler/runs.py.

-- name: lock_job
-- Held for a run's whole length by its transaction: one run of a job at a time over every replica.
SELECT pg_try_advisory_xact_lock(%(lock_key)s) AS locked;

-- name: abandon_running
-- Runs left 'running' by a replica that stopped mid-run: the caller holds the job's lock, so
-- no live run of the job exists.
UPDATE job_runs
SET outcome = 'failed', finished_at = %(now)s,
    error = 'abandoned: replica ' || replica_id || ' stopped before the run ended'
WHERE job_name = %(job)s AND outcome = 'running';

-- name: start_run
-- Nothing is returned when a scheduled run of a dated job has already claimed the date.
INSERT INTO job_runs (job_name, trading_date, trigger, outcome, started_at, replica_id, actor)
VALUES (%(job)s, %(trading_date)s, %(trigger)s, 'running', %(now)s, %(replica)s, %(actor)s)
ON CONFLICT (job_name, trading_date) WHERE trigger <> 'manual' AND outcome <> 'failed' DO NOTHING
RETURNING run_id, job_name, trading_date, trigger, outcome, started_at, finished_at, counts, error, replica_id, actor;

-- name: finish_run
UPDATE job_runs
SET outcome = %(outcome)s, finished_at = %(now)s, counts = %(counts)s, error = %(error)s
WHERE run_id = %(run_id)s
RETURNING run_id, job_name, trading_date, trigger, outcome, started_at, finished_at, counts, error, replica_id, actor;

-- name: last_runs
-- Each named job's latest run.
SELECT r.run_id, r.job_name, r.trading_date, r.trigger, r.outcome, r.started_at, r.finished_at, r.counts,
       r.error, r.replica_id, r.actor
FROM unnest(%(jobs)s::text[]) AS j (name)
CROSS JOIN LATERAL (
    SELECT * FROM job_runs WHERE job_name = j.name ORDER BY run_id DESC LIMIT 1
) r;

-- name: list_runs
-- Newest first; a page continues below the last run id of the previous one, so runs
-- recorded meanwhile neither repeat nor shift a page.
SELECT run_id, job_name, trading_date, trigger, outcome, started_at, finished_at, counts, error, replica_id, actor
FROM job_runs
WHERE (%(job)s::text = '' OR job_name = %(job)s::text)
  AND (%(outcome)s::text = '' OR outcome = %(outcome)s::text)
  AND (%(trigger)s::text = '' OR trigger = %(trigger)s::text)
  AND (%(trading_date)s::date IS NULL OR trading_date = %(trading_date)s::date)
  AND (%(before)s::bigint = 0 OR run_id < %(before)s::bigint)
ORDER BY run_id DESC
LIMIT %(limit)s;

-- name: prune_undated
-- Undated runs (re-centring every few seconds) are kept for a while, not for ever.
DELETE FROM job_runs WHERE trading_date IS NULL AND outcome <> 'running' AND started_at < %(before)s;
