-- The scheduler's runs (issue 12): the trading date a dated job ran for and who asked, and a
-- key that lets each dated job run on schedule at most once per trading date, across
-- restarts and replicas.
ALTER TABLE job_runs
    ADD COLUMN trading_date date,
    ADD COLUMN actor text NOT NULL DEFAULT '';

-- A scheduled or start-up run claims its job's date while it runs and after it ends, unless it
-- failed (a retry may follow). Manual runs claim nothing, so an early manual run never stands
-- in for the scheduled one. Undated jobs (trading_date NULL) are not limited.
CREATE UNIQUE INDEX job_runs_once_per_date ON job_runs (job_name, trading_date)
    WHERE trigger <> 'manual' AND outcome <> 'failed';

-- Runs are listed newest first by id, per job or over all jobs (the primary key).
DROP INDEX job_runs_job;
CREATE INDEX job_runs_job ON job_runs (job_name, run_id DESC);
CREATE INDEX job_runs_running ON job_runs (job_name) WHERE outcome = 'running';
