-- Shard health (services/subscription/shard_health.py runs every query here): what each feed
-- shard last reported about its broker connection, and the database's time to judge it by.

-- name: record_shard_health
-- An outage reported on and on, by this process or by the next one of the shard, keeps its
-- first start, unless the shard had gone quiet in between (then nobody knows).
WITH previous AS (
    SELECT connected FROM shard_health WHERE shard_id = %(shard_id)s
)
INSERT INTO shard_health AS h (shard_id, shard_epoch, connected, down_since, reason, report_interval_seconds,
                               reported_at)
VALUES (%(shard_id)s, %(epoch)s, %(connected)s,
        CASE WHEN %(connected)s THEN NULL
             ELSE least(coalesce(%(down_since)s::timestamptz, clock_timestamp()), clock_timestamp()) END,
        %(reason)s, %(interval)s, clock_timestamp())
ON CONFLICT (shard_id) DO UPDATE SET
    shard_epoch = EXCLUDED.shard_epoch,
    connected = EXCLUDED.connected,
    down_since = CASE
        WHEN NOT h.connected AND NOT EXCLUDED.connected
             AND h.reported_at >= clock_timestamp() - make_interval(secs => 3 * h.report_interval_seconds)
        THEN least(h.down_since, EXCLUDED.down_since)
        ELSE EXCLUDED.down_since END,
    reason = EXCLUDED.reason,
    report_interval_seconds = EXCLUDED.report_interval_seconds,
    reported_at = EXCLUDED.reported_at
RETURNING h.connected, h.down_since, (SELECT connected FROM previous) AS was_connected;

-- name: shard_health
-- One row even when no shard has reported, for the time.
SELECT c.now, h.shard_id, h.connected, h.down_since, h.reason, h.report_interval_seconds, h.reported_at
FROM (SELECT clock_timestamp() AS now) c
LEFT JOIN shard_health h ON true
ORDER BY h.shard_id;
