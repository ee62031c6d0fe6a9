"""The gateway's per-tick encode (part of the codec benchmark): what rounding prices costs.

The same Full packets as the decode figures, with a previous close for every other one,
each turned into the `ticks` entry terminals receive by the gateway's fast path
(``services.feed.gateway.encoding.full_entry``: unpack once, round the 17 prices, pack once)
and by the same path without the rounding (below: the fast path as it was, Dhan's float32
values widened as they are). Interleaved over ROUNDS rounds in one process, best round of
each; the figure is their ratio, with the per-tick times and, for scale, the rounded encode
against dhanhq's ``process_full`` (which also rounds, to 2-decimal strings).

Before timing, every price of a sample of entries is checked: the rounded path's equals the
unrounded one's rounded by Python's decimal ``round(x, 2)``, and its repr has at most two
decimals, so both sides do the work they claim.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2

from bench.report import Report
from services import dhan as codec
from services.feed.gateway import encoding
from services.feed.gateway.encoding import full_entry, full_entry_prefix, key_field

ROUNDS = 5
SAMPLE = 200


def unrounded_full_entry(
    prefix: bytes,
    sequence: int,
    received_us: int,
    full: bytes,
    prev: bytes | None,
    _unpack: Any = encoding._FULL_BODY.unpack_from,
    _pack: Any = encoding._FULL_TICK.pack,
    _ist: int = codec.IST_OFFSET_SECONDS,
) -> bytes:
    """The fast path without rounding: the baseline the rounding's cost is measured against."""
    t = _unpack(full)
    if prev is None:
        parts, prev_close, prev_oi = encoding.FULL_PARTS, 0.0, 0
    else:
        parts = encoding.FULL_PARTS | encoding.PART_PREV
        prev_close, prev_oi = encoding._PREV_BODY.unpack_from(prev)
    return prefix + _pack(
        0x11, sequence, 0x1D, parts, 0x21, t[0], 0x29, t[2] - _ist, 0x31, t[1], 0x39, t[3],
        0x41, t[4], 0x49, t[6], 0x51, t[5], 0x59, t[7],
        0x62, 46, 0x09, t[18], 0x11, t[14], 0x1D, t[16], 0x21, t[19], 0x29, t[15], 0x35, t[17],
        0x62, 46, 0x09, t[24], 0x11, t[20], 0x1D, t[22], 0x21, t[25], 0x29, t[21], 0x35, t[23],
        0x62, 46, 0x09, t[30], 0x11, t[26], 0x1D, t[28], 0x21, t[31], 0x29, t[27], 0x35, t[29],
        0x62, 46, 0x09, t[36], 0x11, t[32], 0x1D, t[34], 0x21, t[37], 0x29, t[33], 0x35, t[35],
        0x62, 46, 0x09, t[42], 0x11, t[38], 0x1D, t[40], 0x21, t[43], 0x29, t[39], 0x35, t[41],
        0x69, received_us, 0x71, t[10], 0x79, t[12],
        0x0181, t[13], 0x0189, t[11], 0x0191, t[8], 0x0199, t[9], 0x01A1, prev_close, 0x01A9, prev_oi,
    )  # fmt: skip


def prices(entry: bytes) -> list[float]:
    """Every price of a `ticks` entry, in field order."""
    (tick,) = feed_pb2.TickBatch.FromString(entry).ticks
    scalars = [tick.last_price, tick.average_price, tick.day_open, tick.day_high, tick.day_low, tick.day_close]
    return [*scalars, tick.previous_close, *(p for d in tick.depth for p in (d.bid_price, d.ask_price))]


def _inputs(frames: Sequence[bytes]) -> list[tuple[bytes, bytes | None]]:
    """Each frame with a previous close (a price near its LTP) for every other one."""
    out: list[tuple[bytes, bytes | None]] = []
    for i, frame in enumerate(frames):
        full = codec.decode_packet(frame, codec.ProtocolErrors())
        assert isinstance(full, codec.FullPacket)
        prev = codec.encode_prev_close(full.segment, full.security_id, round(full.ltp * 0.99, 2), 0) if i % 2 else None
        out.append((frame, prev))
    return out


def _check(prefix: bytes, inputs: Sequence[tuple[bytes, bytes | None]]) -> None:
    for frame, prev in inputs[:SAMPLE]:
        ours, raw = (
            prices(full_entry(prefix, 1, 0, frame, prev)),
            prices(unrounded_full_entry(prefix, 1, 0, frame, prev)),
        )
        assert ours == [round(p, 2) for p in raw], (ours, raw)
        assert all(len(repr(p).partition(".")[2]) <= 2 for p in ours), ours


def _time(encode: Callable[..., bytes], prefix: bytes, inputs: Sequence[tuple[bytes, bytes | None]]) -> float:
    gc.collect()
    started = time.perf_counter()
    for frame, prev in inputs:
        encode(prefix, 7, 1_790_000_000_000_000, frame, prev)
    return time.perf_counter() - started


def run(report: Report, frames: Sequence[bytes], official_seconds: float) -> None:
    """Adds the encode figures; `official_seconds` is dhanhq's best time over `frames`."""
    key = common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_NSE_FNO, security_id=43210)
    prefix = full_entry_prefix(key_field(key))
    inputs = _inputs(frames)
    _check(prefix, inputs)
    best_rounded = best_raw = float("inf")
    for _ in range(ROUNDS):
        best_rounded = min(best_rounded, _time(full_entry, prefix, inputs))
        best_raw = min(best_raw, _time(unrounded_full_entry, prefix, inputs))
    n = len(inputs)
    report.note(
        f"{n} Full packets (every other one with a previous close) encoded as terminals' entries by the "
        f"gateway's fast path, with and without rounding its 17 prices, best of {ROUNDS} interleaved rounds"
    )
    report.add("codec.gateway_encode_rounded_ns", best_rounded / n * 1e9, "ns")
    report.add("codec.gateway_encode_unrounded_ns", best_raw / n * 1e9, "ns")
    report.add("codec.gateway_encode_rounding_cost", best_rounded / best_raw, "x")
    report.add("codec.gateway_encode_rounded_vs_dhanhq", official_seconds / best_rounded, "x")
