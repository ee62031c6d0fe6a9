"""Latency histograms of bench.feed and the gateway's own: percentiles of 0.1 ms bucket
counts, of a Prometheus histogram over a window, the gateway's event-loop lag, and the
terminals' tallies merged."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

TALLY_HISTOGRAMS = ("latency", "shard_part", "sim_part", "gateway_part", "transit")


def hist_ms(hist: Counter[int], p: float) -> float:
    """Percentile of a histogram of 0.1 ms buckets, as the bucket's upper edge in ms."""
    total = sum(hist.values())
    if not total:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * total))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return (bucket + 1) / 10.0
    return math.nan


def histogram_quantiles(before: dict[str, float], after: dict[str, float], name: str) -> str:
    """p50 and p99 of a Prometheus histogram over a window, as the upper bounds of the buckets
    they fall in."""
    bounds = sorted(
        (float(k.split('le="')[1].rstrip('"}')), after[k] - before.get(k, 0.0))
        for k in after
        if k.startswith(f"{name}_bucket")
    )
    total = bounds[-1][1] if bounds else 0.0
    if not total:
        return "no samples"

    def bound(q: float) -> str:
        le = next(le for le, n in bounds if n >= q * total)
        return f"<= {le * 1000:g} ms" if le != math.inf else f"> {bounds[-2][0] * 1000:g} ms"

    return f"p50 {bound(0.5)}, p99 {bound(0.99)}"


def loop_lag(before: dict[str, float], after: dict[str, float]) -> str:
    """The gateway's event-loop lag histogram (a 100 ms timer, services/common/looplag.py)
    over a window: how many firings were late by more than 25, 100 and 250 ms."""

    def count(le: str) -> float:
        key = f'event_loop_lag_seconds_bucket{{le="{le}"}}'
        return after.get(key, 0.0) - before.get(key, 0.0)

    total = count("+Inf")
    if not total:
        return "no loop-lag samples"
    return (
        f"{total:.0f} timer firings, late > 25 ms: {total - count('0.025'):.0f}, > 100 ms: {total - count('0.1'):.0f}, "
        f"> 250 ms: {total - count('0.25'):.0f}"
    )


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The window summaries of every terminal process as one: counts summed, histograms
    merged, seconds the longest, and each process's CPU share."""
    total: dict[str, Any] = {
        "ticks": 0, "stamped": 0, "gaps": 0, "gap_events": 0, "batches": 0, "streams_open": 0, "instruments": 0,
        "events": Counter(), "errors": Counter(), "seconds": 0.0, "cpu": [],
        **{k: Counter() for k in TALLY_HISTOGRAMS},
    }  # fmt: skip
    for s in summaries:
        for k in ("ticks", "stamped", "gaps", "gap_events", "batches", "streams_open", "instruments"):
            total[k] += s[k]
        for k in ("events", "errors"):
            total[k].update(s[k])
        for k in TALLY_HISTOGRAMS:
            total[k].update({int(b): n for b, n in s[k].items()})
        total["seconds"] = max(total["seconds"], s["seconds"])
        total["cpu"].append(s["cpu"] / s["seconds"])
    return total
