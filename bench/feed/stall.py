"""What a stalled terminal costs the gateway, in the end-to-end part: one more stream (the
instruments of a live one, its own channel with a small fixed HTTP/2 window) reads its
snapshot and then stops reading for one rate step; when it reads again, the slow-consumer
warnings the gateway queued for it carry pending_instruments, which must stay <= its
instrument count (one pending value per instrument), and the gateway's RSS over the step
shows what the stall costs. Also the bytes a gateway value holds, to read that RSS by."""

from __future__ import annotations

import math
from typing import Any

from bench.report import Report


def report_stall(
    report: Report,
    size: int,
    opened: dict[str, object],
    stall: dict[str, Any],
    rss_before: float,
    rss_after: float,
    conflated: float,
) -> None:
    warnings = stall.get("warnings", [])
    most_pending = max((w["pending"] for w in warnings), default=math.nan)
    report.add("feed.e2e.stalled_pending_max", most_pending, "instruments", target=size)
    report.add("feed.e2e.stalled_rss_growth_mb", rss_after - rss_before, "MB")
    report.note(
        f"stalled stream ({size} instruments, snapshot of {opened.get('snapshot_ticks')} ticks read, then not read for "
        f"one rate step): gateway RSS {rss_before:.0f} -> {rss_after:.0f} MB over the step; on resuming it got "
        f"{stall.get('batches')} batches / {stall.get('ticks')} ticks (first batch {stall.get('first_batch_ticks')}), "
        f"{len(warnings)} slow-consumer warnings, pending_instruments max {most_pending}, last "
        f"{warnings[-1] if warnings else None}; feed_gateway_conflated_total +{conflated:.0f} when it took its batch"
        + (f"; stream error {stall['error']}" if stall.get("error") else "")
    )


def value_sizes() -> tuple[float, float]:
    """Bytes a gateway Value of a Full packet holds: the Value and its raw packet, and its
    encoded FULL tick, measured with tracemalloc on 500 packets."""
    import tracemalloc

    from dataserver.common.v1 import common_pb2

    from bench.codec import _packets
    from services.common.keys import instrument_key
    from services.feed.gateway.hub import Instrument
    from services.feed.gateway.values import Value

    frames = _packets()[:500]
    instrument = Instrument(instrument_key(2, 1))
    tracemalloc.start()
    try:
        a = tracemalloc.get_traced_memory()[0]
        values = [Value(instrument, 1, 1, bytes(bytearray(f)), None, None) for f in frames]
        b = tracemalloc.get_traced_memory()[0]
        for v in values:
            v.entry(common_pb2.FEED_MODE_FULL)
        c = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (b - a) / len(frames), (c - b) / len(frames)
