"""The budget's use by tier, by shard and by user, published as gauges on the upkeep's period.

Per shard and per tier the figures come from the running counts (cheap every period); per
user they need a pass over the watchlist items, so they are refreshed only when a watchlist
event says some user's items changed (adds, removals, evictions, re-centring)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from services.subscription.metrics import (
    SHARD_INSTRUMENTS,
    TIER_INSTRUMENTS,
    USER_BUCKETS,
    USER_INSTRUMENTS_MAX,
    USERS_BY_INSTRUMENTS,
)
from services.subscription.readmodel import ReadModel

TIERS = ("A", "B")


def user_buckets(figures: Sequence[int], bounds: Sequence[int] = USER_BUCKETS) -> dict[str, int]:
    """How many users hold at most each bound's instruments (cumulative, `+Inf` last) (pure)."""
    counts = [0] * (len(bounds) + 1)
    for figure in figures:
        counts[bisect_left(bounds, figure)] += 1
    buckets: dict[str, int] = {}
    running = 0
    for bound, count in zip([*map(str, bounds), "+Inf"], counts, strict=True):
        running += count
        buckets[bound] = running
    return buckets


class UsageGauges:
    def __init__(self, reads: ReadModel) -> None:
        self._reads = reads
        self._seen_event: int | None = None  # the watchlist event the per-user gauges reflect

    async def refresh(self, loads: Sequence[int], shard_accounts: Sequence[str]) -> None:
        for shard, (load, account) in enumerate(zip(loads, shard_accounts, strict=True)):
            SHARD_INSTRUMENTS.labels(str(shard), account).set(load)
        tiers = await self._reads.tier_loads()
        for tier in TIERS:
            TIER_INSTRUMENTS.labels(tier).set(tiers.get(tier, 0))
        event = await self._reads.last_event_id()
        if event != self._seen_event:
            figures = await self._reads.user_instruments()
            for bound, users in user_buckets(figures).items():
                USERS_BY_INSTRUMENTS.labels(bound).set(users)
            USER_INSTRUMENTS_MAX.set(max(figures, default=0))
            self._seen_event = event
