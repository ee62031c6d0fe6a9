"""The subscription service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SHARD_MOVES = Counter(
    "subscription_shard_moves_total",
    "Make-before-break moves of instruments between shards started, by reason (failover, rebalance).",
    ["reason"],
)
SHARDS_DOWN = Gauge(
    "subscription_shards_down",
    "Shards whose broker connection is down by their last report, or that stopped reporting.",
)
STRANDED = Gauge(
    "subscription_failover_stranded_instruments",
    "Instruments left on shards down past the failover time because no live shard has room.",
)
# Per broker account (the label is the account's name, never its client id).
ACCOUNT_INSTRUMENTS = Gauge(
    "subscription_account_instruments",
    "Instruments assigned to the account's shards (its budget used), moves in flight counted on both sides.",
    ["account"],
)
ACCOUNT_CAPACITY = Gauge(
    "subscription_account_capacity",
    "The account's budget: its connections x the per-connection limit.",
    ["account"],
)
ACCOUNT_SHARDS_CONNECTED = Gauge(
    "subscription_account_shards_connected",
    "Of the account's shards, those whose broker connection is up by their last report.",
    ["account"],
)
# The budget by tier and by shard; refreshed with the account gauges.
TIER_INSTRUMENTS = Gauge(
    "subscription_tier_instruments", "Instruments subscribed for each tier (moves in flight counted once).", ["tier"]
)
SHARD_INSTRUMENTS = Gauge(
    "subscription_shard_instruments",
    "Instruments assigned to each shard, moves in flight counted on both sides.",
    ["shard", "account"],
)
# Per user as a distribution, not a series per user: user ids are unbounded and personal, and
# the question on a dashboard is whether a few users hold the budget. One user's figure is in
# GetSubscriptionStatus. Cumulative like a histogram's buckets, so histogram_quantile works.
USER_BUCKETS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
USERS_BY_INSTRUMENTS = Gauge(
    "subscription_users_by_instruments",
    "Users whose active watchlist items hold at most `le` instruments.",
    ["le"],
)
USER_INSTRUMENTS_MAX = Gauge(
    "subscription_user_instruments_max", "The most instruments one user's active watchlist items hold."
)
EVICTIONS = Counter(
    "subscription_evictions_total",
    "Tier A units evicted, by reason (CAPACITY, TIER_B_PLAN, RECENTER, END_OF_DAY, ADMIN, EXPIRED), counted on commit.",
    ["reason"],
)
