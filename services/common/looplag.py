"""Event-loop lag: how late a timer fires tells whether hot-path work (frame ingest, fan-out)
starves everything else on the loop. Exported as a histogram per process."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Histogram

LOOP_LAG = Histogram(
    "event_loop_lag_seconds",
    "How late a 100 ms timer fires on the asyncio loop.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
INTERVAL = 0.1


async def watch_loop_lag() -> None:
    while True:
        started = time.perf_counter()
        await asyncio.sleep(INTERVAL)
        LOOP_LAG.observe(max(0.0, time.perf_counter() - started - INTERVAL))
