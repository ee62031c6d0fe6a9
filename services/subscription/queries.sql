-- The subscription ledger's SQL: services/subscription/ledger.py runs every query here.
-- Writers that touch capacity hold lock_subscriptions for their whole transaction; it
-- serialises every replica, so counts read under it are exact and assignment versions
-- commit in order.

-- name: lock_subscriptions
SELECT pg_advisory_xact_lock(%(lock_key)s);

-- name: shard_loads
SELECT shard_id, sum(n)::int AS n FROM subscription_counts GROUP BY shard_id;

-- name: total_subscribed
SELECT coalesce(sum(n), 0)::int AS n FROM subscription_counts WHERE NOT incoming;

-- name: existing_subscriptions
SELECT s.exchange_segment, s.security_id, s.feed_mode, s.shard_id, s.moving_to_shard, s.tier
FROM subscriptions s
JOIN unnest(%(segments)s::text[], %(ids)s::bigint[]) AS k (exchange_segment, security_id)
  USING (exchange_segment, security_id);

-- name: insert_subscriptions
INSERT INTO subscriptions (exchange_segment, security_id, trading_symbol, feed_mode, shard_id, tier, ref_count)
SELECT * , 1 FROM unnest(%(segments)s::text[], %(ids)s::bigint[], %(symbols)s::text[], %(modes)s::text[],
                         %(shards)s::int[], %(tiers)s::text[]);

-- name: insert_owners
INSERT INTO subscription_owners (exchange_segment, security_id, owner_kind, owner_id, feed_mode)
SELECT k.exchange_segment, k.security_id, %(owner_kind)s, %(owner_id)s, k.feed_mode
FROM unnest(%(segments)s::text[], %(ids)s::bigint[], %(modes)s::text[]) AS k (exchange_segment, security_id, feed_mode)
ON CONFLICT (exchange_segment, security_id, owner_kind, owner_id) DO UPDATE SET feed_mode = EXCLUDED.feed_mode;

-- name: delete_owner
DELETE FROM subscription_owners
WHERE owner_kind = %(owner_kind)s AND owner_id = %(owner_id)s
RETURNING exchange_segment, security_id;

-- name: delete_owner_keys
DELETE FROM subscription_owners o
USING unnest(%(segments)s::text[], %(ids)s::bigint[]) AS k (exchange_segment, security_id)
WHERE o.owner_kind = %(owner_kind)s AND o.owner_id = %(owner_id)s
  AND o.exchange_segment = k.exchange_segment AND o.security_id = k.security_id
RETURNING o.exchange_segment, o.security_id;

-- name: owner_keys
SELECT exchange_segment, security_id FROM subscription_owners
WHERE owner_kind = %(owner_kind)s AND owner_id = %(owner_id)s;

-- name: drop_unowned
DELETE FROM subscriptions s
USING unnest(%(segments)s::text[], %(ids)s::bigint[]) AS k (exchange_segment, security_id)
WHERE s.exchange_segment = k.exchange_segment AND s.security_id = k.security_id
  AND NOT EXISTS (SELECT 1 FROM subscription_owners o
                  WHERE o.exchange_segment = s.exchange_segment AND o.security_id = s.security_id)
RETURNING s.exchange_segment, s.security_id, s.feed_mode, s.shard_id, s.moving_to_shard, s.tier;

-- name: refresh_from_owners
-- Ref count, tier and mode are recomputed from the owners, so they cannot drift from them.
WITH agg AS (
    SELECT o.exchange_segment, o.security_id, count(*)::int AS n,
           CASE WHEN bool_or(o.owner_kind = 'tier_b') THEN 'B' ELSE 'A' END AS tier,
           (ARRAY['TICKER', 'QUOTE', 'FULL'])[max(CASE o.feed_mode WHEN 'TICKER' THEN 1 WHEN 'QUOTE' THEN 2 ELSE 3 END)] AS mode
    FROM subscription_owners o
    JOIN unnest(%(segments)s::text[], %(ids)s::bigint[]) AS k (exchange_segment, security_id)
      USING (exchange_segment, security_id)
    GROUP BY o.exchange_segment, o.security_id
), old AS (
    SELECT s.exchange_segment, s.security_id, s.feed_mode AS old_mode
    FROM subscriptions s JOIN agg USING (exchange_segment, security_id)
)
UPDATE subscriptions s
SET ref_count = agg.n, tier = agg.tier, feed_mode = agg.mode
FROM agg JOIN old USING (exchange_segment, security_id)
WHERE s.exchange_segment = agg.exchange_segment AND s.security_id = agg.security_id
  AND (s.ref_count, s.tier, s.feed_mode) IS DISTINCT FROM (agg.n, agg.tier, agg.mode)
RETURNING s.exchange_segment, s.security_id, s.feed_mode, old.old_mode, s.shard_id, s.moving_to_shard;

-- name: insert_changes
INSERT INTO assignment_changes (shard_id, exchange_segment, security_id, feed_mode, change)
SELECT * FROM unnest(%(shards)s::int[], %(segments)s::text[], %(ids)s::bigint[], %(modes)s::text[], %(changes)s::text[]);

-- name: notify_assignments
SELECT pg_notify('assignment_changes', %(payload)s);

-- name: insert_audit
INSERT INTO subscription_log (action, actor, reason, tier, exchange_segment, security_id, unit_id, user_id,
                              from_shard, to_shard, details)
SELECT * FROM unnest(%(actions)s::text[], %(actors)s::text[], %(reasons)s::text[], %(tiers)s::text[],
                     %(segments)s::text[], %(ids)s::bigint[], %(units)s::bigint[], %(users)s::text[],
                     %(from_shards)s::int[], %(to_shards)s::int[], %(details)s::jsonb[]);

-- name: lru_units
SELECT item_id, user_id, symbol, expiry_date, last_used_at
FROM watchlist_items
WHERE state = 'ACTIVE' AND item_id <> ALL(%(exclude)s::bigint[])
ORDER BY last_used_at, item_id
LIMIT %(limit)s;

-- name: mark_evicted
UPDATE watchlist_items
SET state = 'EVICTED', evicted_at = now(), eviction_reason = %(reason)s, eviction_message = %(message)s
WHERE item_id = %(item_id)s;

-- name: insert_watchlist_events
INSERT INTO watchlist_events (user_id, kind, item_id, added, removed)
SELECT * FROM unnest(%(users)s::text[], %(kinds)s::text[], %(items)s::bigint[], %(added)s::jsonb[],
                     %(removed)s::jsonb[]);

-- name: notify_watchlists
SELECT pg_notify('watchlist_events', %(payload)s);

-- name: tier_b_count_outside
SELECT count(*) AS n FROM subscriptions s
WHERE s.tier = 'B'
  AND NOT EXISTS (SELECT 1 FROM unnest(%(segments)s::text[], %(ids)s::bigint[]) AS k (exchange_segment, security_id)
                  WHERE k.exchange_segment = s.exchange_segment AND k.security_id = s.security_id);

-- name: find_item
SELECT * FROM watchlist_items
WHERE user_id = %(user_id)s AND symbol = %(symbol)s AND underlying_only = %(underlying_only)s
  AND coalesce(expiry_date, '0001-01-01'::date) = coalesce(%(expiry_date)s::date, '0001-01-01'::date)
FOR UPDATE;

-- name: get_item
SELECT * FROM watchlist_items WHERE item_id = %(item_id)s;

-- name: insert_item
INSERT INTO watchlist_items (user_id, symbol, expiry_date, underlying_only, strikes_each_side, feed_mode,
                             underlying_segment, underlying_security_id, atm_strike, strike_step,
                             underlying_price, price_source, instrument_count)
VALUES (%(user_id)s, %(symbol)s, %(expiry_date)s, %(underlying_only)s, %(strikes_each_side)s, %(feed_mode)s,
        %(underlying_segment)s, %(underlying_security_id)s, %(atm_strike)s, %(strike_step)s,
        %(underlying_price)s, %(price_source)s, %(instrument_count)s)
RETURNING *;

-- name: reactivate_item
UPDATE watchlist_items
SET state = 'ACTIVE', evicted_at = NULL, eviction_reason = NULL, eviction_message = NULL,
    strikes_each_side = %(strikes_each_side)s, feed_mode = %(feed_mode)s,
    underlying_segment = %(underlying_segment)s, underlying_security_id = %(underlying_security_id)s,
    atm_strike = %(atm_strike)s, strike_step = %(strike_step)s, underlying_price = %(underlying_price)s,
    price_source = %(price_source)s, instrument_count = %(instrument_count)s, last_used_at = clock_timestamp()
WHERE item_id = %(item_id)s
RETURNING *;

-- name: update_item_window
UPDATE watchlist_items
SET atm_strike = %(atm_strike)s, strike_step = %(strike_step)s, underlying_price = %(underlying_price)s,
    price_source = %(price_source)s, instrument_count = %(instrument_count)s
WHERE item_id = %(item_id)s
RETURNING *;

-- name: user_quota
SELECT count(*) AS items, coalesce(sum(instrument_count), 0)::int AS instruments
FROM watchlist_items WHERE user_id = %(user_id)s AND state = 'ACTIVE' AND item_id <> %(exclude)s;

-- name: touch_items
-- Only these units move in the LRU order; a NULL user_id touches them whoever holds them.
UPDATE watchlist_items SET last_used_at = clock_timestamp()
WHERE item_id = ANY(%(item_ids)s::bigint[]) AND state = 'ACTIVE'
  AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s)
RETURNING item_id;

-- name: touch_units_holding
UPDATE watchlist_items w SET last_used_at = clock_timestamp()
WHERE w.user_id = %(user_id)s AND w.state = 'ACTIVE'
  AND EXISTS (SELECT 1 FROM subscription_owners o
              JOIN unnest(%(segments)s::text[], %(ids)s::bigint[]) AS k (exchange_segment, security_id)
                USING (exchange_segment, security_id)
              WHERE o.owner_kind = 'unit' AND o.owner_id = w.item_id::text);

-- name: list_items
SELECT * FROM watchlist_items
WHERE (%(user_id)s::text IS NULL OR user_id = %(user_id)s) AND (%(state)s::text IS NULL OR state = %(state)s)
ORDER BY item_id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_items
SELECT count(*) AS n FROM watchlist_items
WHERE (%(user_id)s::text IS NULL OR user_id = %(user_id)s) AND (%(state)s::text IS NULL OR state = %(state)s);

-- name: items_of
SELECT * FROM watchlist_items
WHERE (%(user_id)s::text IS NULL OR user_id = %(user_id)s) AND (%(state)s::text IS NULL OR state = %(state)s)
ORDER BY item_id;

-- name: unit_instruments
SELECT owner_id, exchange_segment, security_id FROM subscription_owners
WHERE owner_kind = 'unit' AND owner_id = ANY(%(owner_ids)s::text[])
ORDER BY owner_id, exchange_segment, security_id;

-- name: tier_b_entries
SELECT * FROM tier_b_entries ORDER BY entry_id;

-- name: upsert_tier_b_entry
INSERT INTO tier_b_entries (entry_id, kind, underlying_symbol, expiry_date, strikes_each_side, include_underlying,
                            feed_mode, underlying_segment, underlying_security_id, atm_strike, strike_step, instrument_count,
                            price_source)
VALUES (%(entry_id)s, %(kind)s, %(underlying_symbol)s, %(expiry_date)s, %(strikes_each_side)s, %(include_underlying)s,
        %(feed_mode)s, %(underlying_segment)s, %(underlying_security_id)s, %(atm_strike)s, %(strike_step)s, %(instrument_count)s,
        %(price_source)s)
ON CONFLICT (entry_id) DO UPDATE SET
    kind = EXCLUDED.kind, underlying_symbol = EXCLUDED.underlying_symbol, expiry_date = EXCLUDED.expiry_date,
    strikes_each_side = EXCLUDED.strikes_each_side, include_underlying = EXCLUDED.include_underlying,
    feed_mode = EXCLUDED.feed_mode, underlying_segment = EXCLUDED.underlying_segment,
    underlying_security_id = EXCLUDED.underlying_security_id, atm_strike = EXCLUDED.atm_strike,
    strike_step = EXCLUDED.strike_step, instrument_count = EXCLUDED.instrument_count,
    price_source = EXCLUDED.price_source, updated_at = now();

-- name: delete_tier_b_entry
DELETE FROM tier_b_entries WHERE entry_id = %(entry_id)s;

-- name: save_tier_b_plan
INSERT INTO tier_b_plan (plan_id, request) VALUES (1, %(request)s)
ON CONFLICT (plan_id) DO UPDATE SET request = EXCLUDED.request, updated_at = now();

-- name: tier_b_count
SELECT count(*) AS n FROM subscriptions WHERE tier = 'B';

-- name: tier_b_plan
SELECT request, updated_at FROM tier_b_plan WHERE plan_id = 1;

-- name: get_tier_b_entry
SELECT * FROM tier_b_entries WHERE entry_id = %(entry_id)s;

-- name: end_of_day_run
SELECT trading_date, done_at, counts FROM end_of_day_runs WHERE trading_date = %(trading_date)s;

-- name: record_end_of_day
-- The latest run of the date: a later run clears what was added since and records its own counts.
INSERT INTO end_of_day_runs (trading_date, counts) VALUES (%(trading_date)s, %(counts)s)
ON CONFLICT (trading_date) DO UPDATE SET done_at = now(), counts = EXCLUDED.counts;

-- name: delete_items
DELETE FROM watchlist_items WHERE item_id = ANY(%(item_ids)s::bigint[]);

-- name: movable_on_shard
SELECT exchange_segment, security_id, feed_mode FROM subscriptions
WHERE shard_id = %(shard_id)s AND moving_to_shard IS NULL
ORDER BY tier, last_used_at, exchange_segment, security_id
LIMIT %(limit)s;

-- name: failover_candidates
SELECT exchange_segment, security_id, feed_mode FROM subscriptions
WHERE shard_id = %(shard_id)s AND moving_to_shard IS NULL
ORDER BY tier DESC, last_used_at DESC, exchange_segment, security_id
LIMIT %(limit)s;

-- name: start_move
UPDATE subscriptions SET moving_to_shard = %(target)s, move_started_at = now()
WHERE exchange_segment = %(segment)s AND security_id = %(security_id)s AND moving_to_shard IS NULL;

-- name: settled_moves
SELECT exchange_segment, security_id, feed_mode, shard_id, moving_to_shard FROM subscriptions
WHERE moving_to_shard IS NOT NULL AND move_started_at <= now() - make_interval(secs => %(settle)s);

-- name: any_settled_moves
SELECT EXISTS (SELECT 1 FROM subscriptions WHERE moving_to_shard IS NOT NULL
               AND move_started_at <= now() - make_interval(secs => %(settle)s)) AS due;

-- name: finish_move
UPDATE subscriptions SET shard_id = moving_to_shard, moving_to_shard = NULL, move_started_at = NULL
WHERE exchange_segment = %(segment)s AND security_id = %(security_id)s AND moving_to_shard IS NOT NULL;

-- name: prune_changes
DELETE FROM assignment_changes WHERE changed_at < now() - make_interval(secs => %(keep_seconds)s);

-- name: prune_events
DELETE FROM watchlist_events WHERE created_at < now() - make_interval(secs => %(keep_seconds)s);
