"""Part 1 of bench.feed, ingest (no database): how fast our shard's client takes FULL packets
from one connection, against bare websockets, bare picows and the official dhanhq client,
each in its own process (bench.feed.readers), first against the simulator in burst mode,
then against a replay of its recorded frames (bench.feed.replay), where each client is bound
by itself; the ratio targets are on the replay runs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.children import Child
from bench.feed.procs import Children
from bench.feed.sim import sim_master, start_simulator
from bench.report import Report
from bench.upstream import simulator_equities

INGEST_INSTRUMENTS = 5_000
INGEST_SECONDS = 5.0
RECORD_BYTES = 48 << 20  # the simulator's frames kept for the replay feed (~300k frames)
OURS_VS_WEBSOCKETS_TARGET = 0.8
OURS_VS_DHANHQ_TARGET = 1.3
Instruments = list[tuple[str, int]]


def _ingest_run(children: Children, kind: str, sim: Child, instruments: Instruments, **extra: Any) -> dict[str, Any]:
    """One reader process against a feed, for INGEST_SECONDS; its result with rates added."""
    port = sim.info["ws_port"]
    path = f"/?version=2&token=bench&clientId=bench-{kind}&authType=2"
    result_path = children.folder / f"ingest-{kind}-{extra.get('compression') or 'plain'}-{len(children.all)}.json"
    spec = {
        "kind": kind,
        "port": port,
        "path": path,
        "url": f"ws://127.0.0.1:{port}{path}",
        "base_url": f"ws://127.0.0.1:{port}",
        "instruments": instruments,
        "seconds": INGEST_SECONDS,
        "sim_pid": sim.pid,
        "result_path": str(result_path),
        **extra,
    }
    child = children.spawn(
        f"client-{kind}-{len(children.all)}",
        ["-m", "bench.feed.readers", json.dumps(spec)],
        dict(os.environ),
        None,
    )
    try:
        child.process.wait(INGEST_SECONDS + 45)
    except subprocess.TimeoutExpired:
        child.stop()
        raise TimeoutError(f"{kind} client did not finish: {child.tail()}") from None
    if child.process.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"{kind} client failed ({child.process.returncode}): {child.tail()}")
    result = json.loads(result_path.read_text())
    result["rate"] = result["packets"] / result["seconds"]
    result["frame_rate"] = result["frames"] / result["seconds"]
    result["cpu_share"] = result["cpu"] / result["seconds"]
    result["sim_share"] = result["sim_cpu"] / result["seconds"]
    result["us_per_frame"] = result["cpu"] / max(1, result["frames"]) * 1e6
    return result


def _frames(recording: bytes, limit: int) -> list[bytes]:
    """Payloads of the first `limit` binary frames of a recorded server -> client stream."""
    out: list[bytes] = []
    pos = 0
    while pos + 2 <= len(recording) and len(out) < limit:
        length, head = recording[pos + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(recording[pos + 2 : pos + 4], "big"), 4
        if recording[pos] & 0x0F == 2:
            out.append(recording[pos + head : pos + head + length])
        pos += head + length
    return out


def _deflated_size(payloads: Sequence[bytes]) -> float:
    """Mean size of each payload compressed as permessage-deflate does it here (12-bit
    window, context kept between messages, sync flush, the 4-byte tail stripped)."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12)
    total = sum(len(compressor.compress(p) + compressor.flush(zlib.Z_SYNC_FLUSH)) - 4 for p in payloads)
    return total / max(1, len(payloads))


def _describe(report: Report, label: str, result: dict[str, Any], feed: str) -> None:
    if result["sim_share"] > 0.9 and result["cpu_share"] < 0.9:
        bound = f"{feed}-bound"
    elif result["cpu_share"] > 0.9:
        bound = "client-bound"
    else:
        bound = "neither saturated"
    report.note(
        f"{label:<30} {result['rate']:>9.0f} packets/s  client CPU {result['cpu_share']:.2f} "
        f"({result['us_per_frame']:.2f} us/frame)  {feed} CPU {result['sim_share']:.2f}  -> {bound}"
        + (f"  extensions={result['extensions']!r}" if result.get("extensions") else "")
    )


Runs = dict[str, dict[str, Any]]


def run_ingest(report: Report, children: Children, folder: Path, csv_path: Path, prices_path: Path) -> None:
    """Part 1: the readers against the simulator, then against the replay; the figures."""
    master = sim_master(folder, csv_path, prices_path, set(), "sim-ingest-master")
    instruments = random.Random(3).sample(simulator_equities(master), INGEST_INSTRUMENTS)
    report.note(
        f"{INGEST_INSTRUMENTS} equities (FULL, one packet per frame) on one connection; simulators in burst "
        f"mode, caps 1e7/s; each client {INGEST_SECONDS:.0f} s after a 1 s warm-up, in its own process"
    )
    recording = folder / "recording.bin"
    sim_runs = _against_simulator(report, children, master, instruments, recording)
    replay_runs = _against_replay(report, children, instruments, recording)
    _report_rates(report, sim_runs, replay_runs)
    _report_details(report, sim_runs, replay_runs, recording)


def _against_simulator(
    report: Report, children: Children, master: Path, instruments: Instruments, recording: Path
) -> Runs:
    """(A) Every reader against the simulator itself; the raw run records what it receives."""
    plain = start_simulator(children, "sim-ingest", master, 0, burst=True, rate=1e7)
    deflate = start_simulator(
        children, "sim-ingest-deflate", master, 0, burst=True, rate=1e7, extra=["--permessage-deflate"]
    )
    runs: Runs = {}
    try:
        for label, sim, kind, extra in (
            ("raw", plain, "raw", {"record_path": str(recording), "record_bytes": RECORD_BYTES}),
            ("websockets", plain, "websockets", {"compression": None}),
            ("picows", plain, "picows", {}),
            ("ours", plain, "ours", {}),
            ("dhanhq", plain, "dhanhq", {}),
            ("websockets_deflate", deflate, "websockets", {"compression": "deflate"}),
        ):
            runs[label] = _ingest_run(children, kind, sim, instruments, **extra)
            _describe(report, f"simulator: {label}", runs[label], "simulator")
    finally:
        plain.stop()
        deflate.stop()
    return runs


def _against_replay(report: Report, children: Children, instruments: Instruments, recording: Path) -> Runs:
    """(B) The readers against a replay of the simulator's own frames: the feed costs next to
    no CPU, so each client is bound by itself."""
    spec = {"record_path": str(recording), "lifetime": 120}
    replay = children.spawn(
        "replay",
        ["-m", "bench.feed.replay", json.dumps(spec)],
        dict(os.environ),
        lambda r: r.get("msg") == "replay listening",
    )
    runs: Runs = {}
    try:
        for label in ("websockets", "picows", "ours", "dhanhq"):
            runs[label] = _ingest_run(
                children, label, replay, instruments, **({"compression": None} if label == "websockets" else {})
            )
            _describe(report, f"replay: {label}", runs[label], "replay")
    finally:
        replay.stop()
    return runs


def _report_rates(report: Report, sim_runs: Runs, replay_runs: Runs) -> None:
    """Every rate, the ratio targets (on the replay runs) and the CPU per frame."""
    report.add("feed.ingest.simulator_max", sim_runs["raw"]["rate"], "packets/s")
    report.add("feed.ingest.sim.websockets_bare", sim_runs["websockets"]["rate"], "packets/s")
    report.add("feed.ingest.sim.picows_bare", sim_runs["picows"]["rate"], "packets/s")
    report.add("feed.ingest.sim.ours", sim_runs["ours"]["rate"], "packets/s")
    report.add("feed.ingest.sim.dhanhq", sim_runs["dhanhq"]["rate"], "packets/s")
    report.add("feed.ingest.sim.websockets_deflate", sim_runs["websockets_deflate"]["rate"], "packets/s")
    report.add("feed.ingest.sim.ours_vs_websockets", sim_runs["ours"]["rate"] / sim_runs["websockets"]["rate"], "x")
    report.add("feed.ingest.sim.ours_vs_dhanhq", sim_runs["ours"]["rate"] / sim_runs["dhanhq"]["rate"], "x")
    report.add("feed.ingest.replay.websockets_bare", replay_runs["websockets"]["rate"], "packets/s")
    report.add("feed.ingest.replay.picows_bare", replay_runs["picows"]["rate"], "packets/s")
    report.add("feed.ingest.replay.ours", replay_runs["ours"]["rate"], "packets/s")
    report.add("feed.ingest.replay.dhanhq", replay_runs["dhanhq"]["rate"], "packets/s")
    for other, target in (("websockets", OURS_VS_WEBSOCKETS_TARGET), ("dhanhq", OURS_VS_DHANHQ_TARGET)):
        ratio = replay_runs["ours"]["rate"] / replay_runs[other]["rate"]
        report.add(f"feed.ingest.ours_vs_{other}", ratio, "x", target=target, op=">=")
    cost = {label: r["us_per_frame"] for label, r in replay_runs.items()}
    report.add("feed.ingest.cpu_per_frame_ours_us", cost["ours"], "us")
    report.note(
        "client CPU per frame against the replay: "
        + ", ".join(f"{label} {us:.2f} us" for label, us in cost.items())
        + f"; websockets/ours {cost['websockets'] / cost['ours']:.2f}x, "
        f"dhanhq/ours {cost['dhanhq'] / cost['ours']:.2f}x"
    )


def _report_details(report: Report, sim_runs: Runs, replay_runs: Runs, recording: Path) -> None:
    """What deflate would change, and details of our client and dhanhq's."""
    ws, wd = sim_runs["websockets"], sim_runs["websockets_deflate"]
    negotiated = "permessage-deflate" in wd.get("extensions", "")
    payloads = _frames(recording.read_bytes()[: 8 << 20], 20_000)
    mean_size = sum(len(p) for p in payloads) / max(1, len(payloads))
    deflated = _deflated_size(payloads)
    report.note(
        f"deflate: the simulator as it is declines permessage-deflate (extensions {ws.get('extensions', '')!r}), so "
        f"websockets' default and compression=None are the same there; with --permessage-deflate it was "
        f"{'negotiated' if negotiated else 'NOT negotiated'} ({wd.get('extensions', '')!r}): {wd['rate']:.0f}/s vs "
        f"{ws['rate']:.0f}/s uncompressed ({wd['rate'] / ws['rate']:.2f}x); client {wd['us_per_frame']:.2f} vs "
        f"{ws['us_per_frame']:.2f} us/frame; simulator CPU {wd['sim_share']:.2f} vs {ws['sim_share']:.2f}, i.e. "
        f"{wd['sim_cpu'] / max(1, wd['frames']) * 1e6:.1f} vs {ws['sim_cpu'] / max(1, ws['frames']) * 1e6:.1f} us of "
        f"simulator CPU per frame; on the wire a {mean_size:.0f}-byte Full packet deflates to ~{deflated:.0f} bytes "
        f"(this stream, 12-bit window, context kept)"
    )
    report.note(
        f"ours: {replay_runs['ours'].get('packets_per_flush', 0):.1f} packets per read burst against the replay, "
        f"protocol errors {replay_runs['ours'].get('protocol_errors')}; dhanhq sampled types "
        f"{replay_runs['dhanhq'].get('sampled_types')}"
    )
