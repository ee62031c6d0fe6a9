-- Each feed shard's broker-connection health, as it last reported it (issue 13 §3): placement
-- avoids down shards and the upkeep fails their instruments over. One row per shard, replaced
-- by every report; a shard whose row is older than three report intervals went quiet.
CREATE TABLE shard_health (
    shard_id                 integer PRIMARY KEY,
    shard_epoch              text NOT NULL,
    connected                boolean NOT NULL,
    down_since               timestamptz,
    reason                   text NOT NULL DEFAULT '',
    -- The interval the service asked for when it took the report, so every replica judges
    -- silence by what the shard was told.
    report_interval_seconds  double precision NOT NULL,
    reported_at              timestamptz NOT NULL DEFAULT now()
);
