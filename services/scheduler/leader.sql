-- The scheduler's leader lock, owned by services/scheduler/leader.py.

-- name: keepalives
-- The server drops a vanished leader's connection (and so its lock) within seconds, even
-- when no packet says it went (TCP connections only; ignored on a Unix socket).
SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3;

-- name: try_lock
-- Session-level: held while this connection lives.
SELECT pg_try_advisory_lock(%(lock_key)s) AS locked;

-- name: ping
SELECT 1 AS alive;

-- name: leader
-- The application name of the session holding the lock in this database: "scheduler <replica>".
SELECT a.application_name
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %(high)s::bigint::oid AND l.objid = %(low)s::bigint::oid AND l.objsubid = 1;
