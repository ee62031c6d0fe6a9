-- The shared state of every service. Released migrations are never edited; add a new file.

-- One row per master load; exactly one is active (serving) at a time.
CREATE TABLE master_versions (
    version         bigserial PRIMARY KEY,
    source          text NOT NULL CHECK (source IN ('dhan', 'file', 'generated')),
    source_detail   text NOT NULL,
    trading_date    date NOT NULL,
    row_count       bigint NOT NULL,
    rejected_count  bigint NOT NULL,
    load_seconds    double precision NOT NULL,
    loaded_at       timestamptz NOT NULL DEFAULT now(),
    active          boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX master_versions_one_active ON master_versions (active) WHERE active;

-- The instrument master, keyed by (segment, security id) within a master version. Rows of
-- inactive versions are deleted after a reload switches over.
CREATE TABLE instruments (
    master_version     bigint NOT NULL REFERENCES master_versions (version) ON DELETE CASCADE,
    exchange_segment   text NOT NULL,
    security_id        bigint NOT NULL,
    exchange           text NOT NULL,
    instrument_type    text NOT NULL,
    trading_symbol     text NOT NULL,
    display_name       text NOT NULL,
    underlying_symbol  text NOT NULL,
    lot_size           double precision NOT NULL,
    tick_size          double precision NOT NULL,
    expiry_date        date,
    expiry_flag        text,
    strike_price       double precision,
    option_type        text,
    series             text NOT NULL,
    previous_close     double precision,
    PRIMARY KEY (master_version, exchange_segment, security_id)
);
CREATE INDEX instruments_chain ON instruments (master_version, underlying_symbol, expiry_date);

-- Option-chain windows computed by the ATM engine, per (underlying, expiry, ATM, width).
CREATE TABLE atm_cache (
    master_version     bigint NOT NULL REFERENCES master_versions (version) ON DELETE CASCADE,
    underlying_symbol  text NOT NULL,
    expiry_date        date NOT NULL,
    atm_strike         double precision NOT NULL,
    strikes_each_side  integer NOT NULL,
    strike_step        double precision NOT NULL,
    underlying_price   double precision NOT NULL,
    -- [[strike, call security id or null, put security id or null], ...], lowest strike first
    window_strikes     jsonb NOT NULL,
    computed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (master_version, underlying_symbol, expiry_date, atm_strike, strikes_each_side)
);

-- Callers of the API. Tokens are stored only as their SHA-256.
CREATE TABLE api_keys (
    key_hash    text PRIMARY KEY,
    user_id     text NOT NULL,
    role        text NOT NULL CHECK (role IN ('user', 'admin')),
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Tier A: one row per user's watchlist item (a unit: the underlying and its chain window).
-- The unit's instruments are its rows in subscription_owners (owner_kind 'unit').
CREATE TABLE watchlist_items (
    item_id                  bigserial PRIMARY KEY,
    user_id                  text NOT NULL,
    symbol                   text NOT NULL,
    -- the chain's expiry; NULL for an item that is only the underlying
    expiry_date              date,
    underlying_only          boolean NOT NULL DEFAULT false,
    strikes_each_side        integer NOT NULL,
    feed_mode                text NOT NULL DEFAULT 'FULL' CHECK (feed_mode IN ('TICKER', 'QUOTE', 'FULL')),
    underlying_segment       text NOT NULL,
    underlying_security_id   bigint NOT NULL,
    atm_strike               double precision,
    strike_step              double precision,
    underlying_price         double precision,
    price_source             text,
    -- the unit's size when it was last resolved, for quotas and status without a join
    instrument_count         integer NOT NULL DEFAULT 0,
    state                    text NOT NULL DEFAULT 'ACTIVE' CHECK (state IN ('ACTIVE', 'EVICTED')),
    evicted_at               timestamptz,
    eviction_reason          text,
    eviction_message         text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    last_used_at             timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE UNIQUE INDEX watchlist_items_identity
    ON watchlist_items (user_id, symbol, coalesce(expiry_date, '0001-01-01'::date), underlying_only);
CREATE INDEX watchlist_items_lru ON watchlist_items (last_used_at, item_id) WHERE state = 'ACTIVE';
CREATE INDEX watchlist_items_user ON watchlist_items (user_id, item_id);

-- Desired feed subscriptions: one row per instrument, placed on one shard.
CREATE TABLE subscriptions (
    exchange_segment  text NOT NULL,
    security_id       bigint NOT NULL,
    trading_symbol    text NOT NULL DEFAULT '',
    feed_mode         text NOT NULL CHECK (feed_mode IN ('TICKER', 'QUOTE', 'FULL')),
    shard_id          integer NOT NULL,
    tier              text NOT NULL CHECK (tier IN ('A', 'B')),
    ref_count         integer NOT NULL CHECK (ref_count > 0),
    subscribed_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at      timestamptz NOT NULL DEFAULT now(),
    -- make-before-break: while set, the instrument counts against both shards
    moving_to_shard   integer,
    move_started_at   timestamptz,
    PRIMARY KEY (exchange_segment, security_id)
);
CREATE INDEX subscriptions_shard ON subscriptions (shard_id);
CREATE INDEX subscriptions_moving ON subscriptions (moving_to_shard) WHERE moving_to_shard IS NOT NULL;

-- Subscriptions per (shard, tier), kept by triggers in the writers' own transactions, so
-- capacity checks and status read a handful of rows instead of scanning 25,000. Moving
-- instruments count on their target shard too (incoming).
CREATE TABLE subscription_counts (
    shard_id  integer NOT NULL,
    tier      text NOT NULL,
    incoming  boolean NOT NULL,
    n         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (shard_id, tier, incoming)
);

-- Transition tables are visible only in the trigger function itself, hence one per event.
CREATE FUNCTION subscription_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subscription_counts (shard_id, tier, incoming, n)
    SELECT shard_id, tier, false, count(*) FROM new_rows GROUP BY shard_id, tier
    UNION ALL
    SELECT moving_to_shard, tier, true, count(*) FROM new_rows WHERE moving_to_shard IS NOT NULL GROUP BY moving_to_shard, tier
    ON CONFLICT (shard_id, tier, incoming) DO UPDATE SET n = subscription_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION subscription_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subscription_counts (shard_id, tier, incoming, n)
    SELECT shard_id, tier, false, -count(*) FROM old_rows GROUP BY shard_id, tier
    UNION ALL
    SELECT moving_to_shard, tier, true, -count(*) FROM old_rows WHERE moving_to_shard IS NOT NULL GROUP BY moving_to_shard, tier
    ON CONFLICT (shard_id, tier, incoming) DO UPDATE SET n = subscription_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION subscription_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subscription_counts (shard_id, tier, incoming, n)
    SELECT shard_id, tier, incoming, sum(delta) FROM (
        SELECT shard_id, tier, false AS incoming, -1 AS delta FROM old_rows
        UNION ALL SELECT moving_to_shard, tier, true, -1 FROM old_rows WHERE moving_to_shard IS NOT NULL
        UNION ALL SELECT shard_id, tier, false, 1 FROM new_rows
        UNION ALL SELECT moving_to_shard, tier, true, 1 FROM new_rows WHERE moving_to_shard IS NOT NULL
    ) changes GROUP BY shard_id, tier, incoming HAVING sum(delta) <> 0
    ON CONFLICT (shard_id, tier, incoming) DO UPDATE SET n = subscription_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE TRIGGER subscription_counts_insert AFTER INSERT ON subscriptions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION subscription_counts_inserted();
CREATE TRIGGER subscription_counts_delete AFTER DELETE ON subscriptions
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION subscription_counts_deleted();
CREATE TRIGGER subscription_counts_update AFTER UPDATE ON subscriptions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION subscription_counts_updated();

-- Who holds each subscription: Tier B plan entries and Tier A units.
CREATE TABLE subscription_owners (
    exchange_segment  text NOT NULL,
    security_id       bigint NOT NULL,
    owner_kind        text NOT NULL CHECK (owner_kind IN ('tier_b', 'unit')),
    owner_id          text NOT NULL,
    feed_mode         text NOT NULL CHECK (feed_mode IN ('TICKER', 'QUOTE', 'FULL')),
    PRIMARY KEY (exchange_segment, security_id, owner_kind, owner_id),
    FOREIGN KEY (exchange_segment, security_id)
        REFERENCES subscriptions (exchange_segment, security_id) ON DELETE CASCADE
);
CREATE INDEX subscription_owners_owner ON subscription_owners (owner_kind, owner_id);

-- Audit: every subscribe, unsubscribe, eviction, move and re-centre.
CREATE TABLE subscription_log (
    log_id            bigserial PRIMARY KEY,
    logged_at         timestamptz NOT NULL DEFAULT now(),
    action            text NOT NULL,
    actor             text NOT NULL,
    reason            text NOT NULL DEFAULT '',
    tier              text,
    exchange_segment  text,
    security_id       bigint,
    unit_id           bigint,
    user_id           text,
    from_shard        integer,
    to_shard          integer,
    details           jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX subscription_log_instrument ON subscription_log (exchange_segment, security_id, logged_at);
CREATE INDEX subscription_log_time ON subscription_log (logged_at);
CREATE INDEX subscription_log_evictions ON subscription_log (logged_at) WHERE action = 'EVICT';

-- Every change to a shard's assignment, in commit order (writers serialise on one lock),
-- so a shard's stream can resume from a version; pruned after a while (streams that fall
-- that far behind take a fresh snapshot).
CREATE TABLE assignment_changes (
    version           bigserial PRIMARY KEY,
    shard_id          integer NOT NULL,
    exchange_segment  text NOT NULL,
    security_id       bigint NOT NULL,
    feed_mode         text NOT NULL,
    change            text NOT NULL CHECK (change IN ('add', 'update', 'remove')),
    changed_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assignment_changes_shard ON assignment_changes (shard_id, version);

-- What users see happen to their watchlists (added, removed, evicted, re-centred).
CREATE TABLE watchlist_events (
    event_id    bigserial PRIMARY KEY,
    user_id     text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('added', 'removed', 'evicted', 'recentered')),
    item_id     bigint NOT NULL,
    added       jsonb NOT NULL DEFAULT '[]'::jsonb,
    removed     jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX watchlist_events_user ON watchlist_events (user_id, event_id);

-- Tier B: the plan as last set, and what each entry resolved to.
CREATE TABLE tier_b_plan (
    plan_id     integer PRIMARY KEY DEFAULT 1 CHECK (plan_id = 1),
    request     jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tier_b_entries (
    entry_id                text PRIMARY KEY,
    kind                    text NOT NULL CHECK (kind IN ('chain', 'instrument')),
    underlying_symbol       text NOT NULL DEFAULT '',
    expiry_date             date,
    strikes_each_side       integer NOT NULL DEFAULT 0,
    include_underlying      boolean NOT NULL DEFAULT true,
    feed_mode               text NOT NULL CHECK (feed_mode IN ('TICKER', 'QUOTE', 'FULL')),
    underlying_segment      text,
    underlying_security_id  bigint,
    atm_strike              double precision,
    strike_step             double precision,
    instrument_count        integer NOT NULL DEFAULT 0,
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- One row per trading date whose end of day has run, so it runs once.
CREATE TABLE end_of_day_runs (
    trading_date  date PRIMARY KEY,
    done_at       timestamptz NOT NULL DEFAULT now(),
    counts        jsonb NOT NULL
);

-- The scheduler's job runs.
CREATE TABLE job_runs (
    run_id       bigserial PRIMARY KEY,
    job_name     text NOT NULL,
    trigger      text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'startup')),
    outcome      text NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed', 'skipped')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    counts       jsonb NOT NULL DEFAULT '{}'::jsonb,
    error        text NOT NULL DEFAULT '',
    replica_id   text NOT NULL
);
CREATE INDEX job_runs_job ON job_runs (job_name, started_at DESC);
