"""Part 2 of bench.feed, one shard process: shard 0 of the filled pool (~5,000 instruments)
against the simulator paced at SHARD_RATE packets/s with send stamps. The bench reads its
StreamShardTicks stream as the gateway does and measures, per record, bench receipt - the
record's receive_us (frame receipt at the shard -> arrival at the gateway side), the
records/s achieved, per-instrument sequence gaps and the shard's RSS."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.children import Child, cpu_seconds
from bench.feed.latency import hist_ms
from bench.feed.procs import Children
from bench.feed.sim import paced_caps, sim_packets, start_simulator
from bench.feed.stack import Stack, shard_status, wait_subscribed
from bench.report import Report

SHARD_RATE = 50_000.0  # packets/s offered to shard 0
SHARD_WINDOW_SECONDS = 6.0
SHARD_P99_TARGET_MS = 10.0
SHARD_RSS_TARGET_MB = 200.0
SUSTAINED = 0.95  # delivered / offered for a rate to count as sustained
MS_PER_DAY = 86_400_000


@dataclass
class ShardWindow:
    """What the bench read from the shard's stream over its window."""

    records: int = 0
    messages: int = 0
    gaps: int = 0
    seconds: float = 0.0
    opening: list[str] = field(default_factory=list)  # the stream's first messages, before packets
    hist: Counter[int] = field(default_factory=Counter)  # shard receipt -> here, 0.1 ms buckets
    sim_hist: Counter[int] = field(default_factory=Counter)  # simulator send stamp -> shard receipt
    last_seq: dict[int, int] = field(default_factory=dict)

    def take(self, records: bytes) -> None:
        """Times every record of one stream message and checks its sequence."""
        from services.dhan.protocol import split_head
        from services.feed.records import RECORD_HEAD, RECORD_HEADER

        unpack_record, header_size = RECORD_HEAD.unpack_from, RECORD_HEADER.size
        now_us = time.time_ns() // 1000
        size, offset, count = len(records), 0, 0
        last_seq, hist, sim_hist = self.last_seq, self.hist, self.sim_hist
        while offset < size:
            sequence, received_us, head = unpack_record(records, offset)
            code, length, key = split_head(head)
            previous = last_seq.get(key)
            if previous is not None and sequence != previous + 1:
                self.gaps += 1
            last_seq[key] = sequence
            hist[(now_us - received_us) // 100] += 1
            if code == 8:  # a Full packet: its volume holds the simulator's send stamp
                stamp = int.from_bytes(records[offset + 38 : offset + 42], "little", signed=True)
                sim_hist[int(((received_us / 1000.0) % MS_PER_DAY - stamp) % MS_PER_DAY * 10)] += 1
            offset += header_size + length
            count += 1
        self.records += count
        self.messages += 1


async def _consume_shard(address: str, warmup: float, window: float, on_window: Callable[[str], None]) -> ShardWindow:
    """Reads StreamShardTicks like the gateway does, timing each record of the window."""
    import grpc
    from dataserver.feed.v1 import shard_pb2, shard_pb2_grpc

    out = ShardWindow()
    phase = 0  # 0 waiting for packets, 1 warm-up, 2 window, 3 done
    due = started = 0.0
    options = [("grpc.max_receive_message_length", 32 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = shard_pb2_grpc.ShardServiceStub(channel).StreamShardTicks(
            shard_pb2.StreamShardTicksRequest(gateway_id="bench")
        )
        hard = time.monotonic() + warmup + window + 60
        async for message in call:
            now = time.perf_counter()
            body = message.WhichOneof("body")
            if body != "packets":
                if phase == 0:
                    out.opening.append(str(body))
                continue
            if phase == 0:
                phase, due = 1, now + warmup
            elif phase == 1 and now >= due:
                phase, due, started = 2, now + window, now
                on_window("start")
            elif phase == 2 and now >= due:
                out.seconds = now - started
                on_window("end")
                call.cancel()
                break
            if time.monotonic() > hard:
                raise TimeoutError("the shard stream did not give a full window")
            if phase == 2:
                out.take(message.packets.records)
    return out


def run_shard(
    report: Report, children: Children, stack: Stack, sim_master: Path, sim_port: int, shard0: Callable[[], Child]
) -> None:
    """Part 2: shard 0 (`shard0()` starts it, left running for part 3) against a paced simulator."""
    n0 = stack.shard_loads.get(0, 0)
    per_instrument = SHARD_RATE / n0
    sim = start_simulator(
        children,
        "sim-shard",
        sim_master,
        sim_port,
        burst=False,
        rate=paced_caps(SHARD_RATE),
        ticks_per_second=per_instrument,
        extra=["--stamp-send-time"],
    )
    try:
        shard = shard0()
        shard_address = f"127.0.0.1:{shard.info['port']}"
        asyncio.run(wait_subscribed([shard_address], [n0]))
        report.note(
            f"shard 0 process pid {shard.pid} with {n0} instruments, simulator paced at {per_instrument:.2f} ticks/s "
            f"per instrument = {SHARD_RATE:.0f} packets/s offered (caps {paced_caps(SHARD_RATE):.0f}/s)"
        )
        marks: dict[str, dict[str, float]] = {}

        def on_window(edge: str) -> None:
            marks[edge] = {
                "t": time.perf_counter(),
                "sim": sim.cpu(),
                "shard": shard.cpu(),
                "bench": cpu_seconds(os.getpid()),
                "sent": sim_packets(sim),
            }
            if edge == "end":
                shard.profile_phase("2. shard at 50k/s")
                sim.profile_phase("2. shard at 50k/s")

        result = asyncio.run(_consume_shard(shard_address, 2.0, SHARD_WINDOW_SECONDS, on_window))
        status = asyncio.run(shard_status(shard_address))
    finally:
        sim.stop()
    _report_shard(report, shard, result, marks, status)


def _report_shard(
    report: Report, shard: Child, result: ShardWindow, marks: dict[str, dict[str, float]], status: Any
) -> None:
    elapsed = marks["end"]["t"] - marks["start"]["t"]
    sent_rate = (marks["end"]["sent"] - marks["start"]["sent"]) / elapsed
    share = {k: (marks["end"][k] - marks["start"][k]) / elapsed for k in ("sim", "shard", "bench")}
    report.add("feed.shard.offered", SHARD_RATE, "packets/s")
    report.add("feed.shard.simulator_sent", sent_rate, "packets/s")
    report.add(
        "feed.shard.achieved", result.records / result.seconds, "packets/s", target=SHARD_RATE * SUSTAINED, op=">="
    )
    report.add("feed.shard.p50_ms", hist_ms(result.hist, 50), "ms")
    report.add("feed.shard.p99_ms", hist_ms(result.hist, 99), "ms", target=SHARD_P99_TARGET_MS)
    report.add("feed.shard.max_ms", hist_ms(result.hist, 100), "ms")
    report.add("feed.shard.gaps", result.gaps, target=0)
    report.add("feed.shard.rss_mb", shard.rss_mb(), "MB", target=SHARD_RSS_TARGET_MB)
    report.note(
        f"window {result.seconds:.1f} s: {result.records} records in {result.messages} stream messages "
        f"({result.records / max(1, result.messages):.0f} per message); simulator send -> shard receipt p50 "
        f"{hist_ms(result.sim_hist, 50):.1f} ms, p99 {hist_ms(result.sim_hist, 99):.1f} ms (1 ms stamps)"
    )
    report.note(
        f"CPU share over the window: simulator {share['sim']:.2f}, shard {share['shard']:.2f}, bench reader "
        f"{share['bench']:.2f}; shard status: frames {status.frames_received}, packets {status.packets_received}, "
        f"protocol errors {status.protocol_errors}, reconnects {status.reconnect_count}; "
        f"peak RSS {shard.hwm_mb():.0f} MB"
    )
