-- The read model's SQL (services/subscription/readmodel.py runs every query here): status,
-- listings, the audit log and the streams. Read-only.

-- name: lock_subscriptions_shared
SELECT pg_advisory_xact_lock_shared(%(lock_key)s);

-- name: shard_usage
SELECT shard_id,
       coalesce(sum(n) FILTER (WHERE NOT incoming), 0)::int AS n,
       coalesce(sum(n) FILTER (WHERE NOT incoming AND tier = 'A'), 0)::int AS a,
       coalesce(sum(n) FILTER (WHERE NOT incoming AND tier = 'B'), 0)::int AS b,
       coalesce(sum(n) FILTER (WHERE incoming), 0)::int AS incoming
FROM subscription_counts GROUP BY shard_id;

-- name: moving_out
SELECT shard_id, count(*)::int AS n FROM subscriptions
WHERE moving_to_shard IS NOT NULL GROUP BY shard_id;

-- name: owner_counts
SELECT 'unit' AS owner_kind, count(*)::int AS n FROM watchlist_items WHERE state = 'ACTIVE'
UNION ALL
SELECT 'tier_b', count(*)::int FROM tier_b_entries;

-- name: user_usage
SELECT user_id,
       count(*) FILTER (WHERE state = 'ACTIVE')::int AS active,
       count(*) FILTER (WHERE state = 'EVICTED')::int AS evicted,
       coalesce(sum(instrument_count) FILTER (WHERE state = 'ACTIVE'), 0)::int AS instruments
FROM watchlist_items GROUP BY user_id ORDER BY user_id LIMIT %(limit)s;

-- name: user_count
SELECT count(DISTINCT user_id)::int AS n FROM watchlist_items;

-- name: evictions_since
-- Evictions to make room (capacity or the Tier B plan), not admin clears or end of day.
SELECT count(*)::int AS n FROM subscription_log
WHERE action = 'EVICT' AND logged_at >= %(since)s AND details->>'reason' IN ('CAPACITY', 'TIER_B_PLAN');

-- name: list_subscriptions
SELECT s.* FROM subscriptions s
WHERE (%(tier)s::text IS NULL OR s.tier = %(tier)s)
  AND (%(shard_id)s::int IS NULL OR s.shard_id = %(shard_id)s OR s.moving_to_shard = %(shard_id)s)
  AND (%(user_id)s::text IS NULL OR EXISTS (
        SELECT 1 FROM subscription_owners o JOIN watchlist_items w ON o.owner_id = w.item_id::text
        WHERE o.owner_kind = 'unit' AND w.user_id = %(user_id)s
          AND o.exchange_segment = s.exchange_segment AND o.security_id = s.security_id))
ORDER BY s.exchange_segment, s.security_id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_subscriptions
SELECT count(*)::int AS n FROM subscriptions s
WHERE (%(tier)s::text IS NULL OR s.tier = %(tier)s)
  AND (%(shard_id)s::int IS NULL OR s.shard_id = %(shard_id)s OR s.moving_to_shard = %(shard_id)s)
  AND (%(user_id)s::text IS NULL OR EXISTS (
        SELECT 1 FROM subscription_owners o JOIN watchlist_items w ON o.owner_id = w.item_id::text
        WHERE o.owner_kind = 'unit' AND w.user_id = %(user_id)s
          AND o.exchange_segment = s.exchange_segment AND o.security_id = s.security_id));

-- name: owners_of
SELECT o.exchange_segment, o.security_id, o.owner_kind, o.owner_id, o.feed_mode, w.user_id, w.created_at
FROM subscription_owners o
LEFT JOIN watchlist_items w ON o.owner_kind = 'unit' AND w.item_id::text = o.owner_id
JOIN unnest(%(segments)s::text[], %(ids)s::bigint[]) AS k (exchange_segment, security_id)
  USING (exchange_segment, security_id)
ORDER BY o.owner_kind DESC, o.owner_id;

-- name: get_subscription
SELECT * FROM subscriptions WHERE exchange_segment = %(segment)s AND security_id = %(security_id)s;

-- name: audit_entries
SELECT * FROM subscription_log
WHERE (%(segment)s::text IS NULL OR (exchange_segment = %(segment)s AND security_id = %(security_id)s))
  AND (%(action)s::text IS NULL OR action = %(action)s)
  AND (%(tier)s::text IS NULL OR tier = %(tier)s)
  AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s)
  AND (%(unit_id)s::bigint IS NULL OR unit_id = %(unit_id)s)
  AND (%(start)s::timestamptz IS NULL OR logged_at >= %(start)s)
  AND (%(end)s::timestamptz IS NULL OR logged_at < %(end)s)
  AND (%(before)s::bigint IS NULL OR log_id < %(before)s)
ORDER BY log_id DESC
LIMIT %(limit)s;

-- name: shard_snapshot
SELECT exchange_segment, security_id, feed_mode FROM subscriptions
WHERE shard_id = %(shard_id)s OR moving_to_shard = %(shard_id)s
ORDER BY exchange_segment, security_id;

-- name: last_change_version
SELECT coalesce(max(version), 0)::bigint AS version FROM assignment_changes;

-- name: shard_changes
SELECT version, exchange_segment, security_id, feed_mode, change FROM assignment_changes
WHERE shard_id = %(shard_id)s AND version > %(after)s
ORDER BY version
LIMIT %(limit)s;

-- name: last_event_id
SELECT coalesce(max(event_id), 0)::bigint AS event_id FROM watchlist_events;

-- name: watchlist_items
SELECT * FROM watchlist_items WHERE (%(user_id)s::text IS NULL OR user_id = %(user_id)s) ORDER BY item_id;

-- name: items_by_id
SELECT * FROM watchlist_items WHERE item_id = ANY(%(item_ids)s::bigint[]);

-- name: events_after
SELECT * FROM watchlist_events
WHERE event_id > %(after)s AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s)
ORDER BY event_id
LIMIT %(limit)s;

-- name: tier_usage
SELECT tier, coalesce(sum(n) FILTER (WHERE NOT incoming), 0)::int AS n FROM subscription_counts GROUP BY tier;

-- name: user_instruments
-- One row per user with an active item: the instruments their active items hold.
SELECT sum(instrument_count)::int AS n FROM watchlist_items WHERE state = 'ACTIVE' GROUP BY user_id;
