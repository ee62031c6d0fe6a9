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
    "subscription_failover_stranded",
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
