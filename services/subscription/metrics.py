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
