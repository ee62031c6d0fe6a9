"""Feed benchmark: shard ingest against the simulator, a real shard process, and the whole
path simulator -> shards -> gateway -> terminals.

Every process is real and separate: the simulator (`python -m simulator`),
shards (`python -m services.feed shard`), the gateway (`python -m services.feed gateway`),
the subscription service, a registry child process with the full master (bench.registry's),
an embedded Postgres, and client processes (bench._feed_clients). Each logs to a file in a
temporary folder; every wait is bounded and every child is stopped at the end whatever
happened (SIGTERM, then SIGKILL). Loopback only. The machine has 2 cores and is noisy, so
each figure comes with the CPU each process used over the same window (utime + stime from
/proc/<pid>/stat), and ratios are between runs of the same bench run.

1. Ingest (no database). A simulator in burst mode (caps raised) serves FULL packets, one
   per frame, for INGEST_INSTRUMENTS equities on one connection (equities are the
   simulator's cheapest books: no option model per tick). Each client runs in its own
   process for INGEST_SECONDS after a warm-up (bench._feed_clients): a raw socket frame
   walker (the simulator's own ceiling; it also records the frames it gets), bare websockets
   counting bytes (compression=None), bare picows counting bytes, ours (BrokerConnection +
   Ingest over picows, subscribed with codec.build_subscribe_messages, counting packets
   applied) and the official dhanhq MarketFeed.get_data() loop (its URL constant pointed at
   the simulator). The simulator manages ~120k frames/s on its core, less than the fast
   clients take, so the same clients run again against a replay of the recorded frames (a
   process that writes them with sendall: next to no CPU), where each client is bound by
   itself; the ratio targets are on those runs, and the simulator runs are reported too.
   The default websockets client (permessage-deflate offered) runs against a second
   simulator started with the bench-only `--permessage-deflate` (the normal simulator
   declines the offer, so there the two settings are the same thing).
2. Shard process. The stack: Postgres, registry (full master), subscription service with
   the default budget (5 connections x 5,000) filled with watchlist adds (stock option
   chains, as bench.subscription does) until no unit fits: the placement fills the 5
   shards evenly, so shard 0 holds ~5,000 instruments (what FEED_CONNECTIONS=1 and a
   5,000 fill would give it, with one fill serving parts 2 and 3). Then the simulator (a
   copy of the master with only the filled options, so it starts in a second) paced at
   SHARD_RATE packets/s in total over shard 0's instruments, with the bench-only
   `--stamp-send-time`, and the real shard 0 process; the bench consumes its
   StreamShardTicks stream and measures, per record, bench receipt - record receive_us
   (frame receipt at the shard -> arrival at the gateway side), the records/s achieved,
   per-instrument sequence gaps and the shard's RSS.
3. End to end. Shards 1-4 join shard 0, the gateway follows all five, and TERMINAL_PROCESSES
   client processes open STREAMS StreamTicks streams of PER_STREAM instruments each (every
   filled instrument once, shuffled). The simulator is restarted for each offered rate (its
   pacing is set at start; the shards reconnect within FEED_MAX_BACKOFF_SECONDS and
   continue their numbering): E2E_RATE first, then a bisection towards the highest rate
   that meets the targets; between rates the backlog is left to drain. Latency = terminal
   receipt - the simulator's send stamp (1 ms resolution: an upper bound by < 1 ms), split
   at the shard's receipt (Tick.receive_time_micros) and the gateway's send (TickBatch.sent_at),
   sequence gaps per instrument, ticks/s delivered, CPU per process, gateway and shard RSS,
   and the machine's own state over the window (bench.machine: idle share, run queue,
   context switches), since the load generators share its 2 cores with the system measured.
   During the second rate one more stream (the instruments of a live one, its own channel
   with a small fixed HTTP/2 window) reads its snapshot and then stops reading; when it
   reads again, the slow-consumer warnings the gateway queued for it carry
   pending_instruments, which must stay <= its instrument count (one pending value per
   instrument), and the gateway's RSS over that step shows what the stall costs.

BENCH_PROFILE=1 runs the simulator, shard 0 and the gateway under cProfile
(bench._profiled_feed), dumps a profile and the garbage collector's pauses per measured
window and prints them (the figures of such a run are inflated by the profiler);
BENCH_PROFILE=gc records only the GC pauses (full speed). BENCH_FEED_PARTS=1,2,3 selects
parts (default all; 3 needs 2); BENCH_E2E_RATE overrides the first offered rate (for profiling),
BENCH_E2E_STEPS the bisection steps after it (default 4; 0 for a quick run at one rate),
BENCH_TERMINAL_CHANNELS the gRPC channels per terminal process (default 4).
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import random
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._feed_clients import MS_PER_DAY
from bench.children import (
    START_SECONDS,
    Child,
    bench_database,
    cpu_seconds,
    service_started,
    spawn,
    stop_spawned,
)
from bench.machine import MachineSampler, MachineWindow
from bench.report import Report, print_profile

# 1. ingest
INGEST_INSTRUMENTS = 5_000
INGEST_SECONDS = 5.0
RECORD_BYTES = 48 << 20  # the simulator's frames kept for the replay feed (~300k frames)
OURS_VS_WEBSOCKETS_TARGET = 0.8
OURS_VS_DHANHQ_TARGET = 1.3
# 2. shard process
SHARD_RATE = 50_000.0  # packets/s offered to shard 0
SHARD_WINDOW_SECONDS = 6.0
SHARD_P99_TARGET_MS = 10.0
SHARD_RSS_TARGET_MB = 200.0
# 3. end to end
E2E_RATE = float(os.environ.get("BENCH_E2E_RATE", 50_000))  # ticks/s offered in total (the figure)
STREAMS, PER_STREAM = 100, 250
TERMINAL_PROCESSES = 2
TERMINAL_CHANNELS = int(os.environ.get("BENCH_TERMINAL_CHANNELS", 4))  # per terminal process
E2E_WINDOW_SECONDS = 6.0
E2E_WARMUP_SECONDS = 1.5  # after the gateway has caught up with the reconnect burst
E2E_CATCH_UP_SECONDS = 20.0  # at most: the window measures the steady state, not the reconnect burst
E2E_EXTRA_RATES = int(
    os.environ.get("BENCH_E2E_STEPS", 4)
)  # bisection steps after E2E_RATE (fewer: quicker experiments)
E2E_P99_TARGET_MS = 25.0
GATEWAY_RSS_TARGET_MB = 400.0
SUSTAINED = 0.95  # delivered / offered for a rate to count as sustained

CAPACITY_CONNECTIONS, PER_CONNECTION = 5, 5_000
FILL_CLIENTS = 8
UNIT_SIZE = 51
RPC_SECONDS = 10.0

PROFILE = os.environ.get("BENCH_PROFILE", "") not in ("", "0")  # "gc": GC pauses only, no cProfile
PARTS = {int(p) for p in os.environ.get("BENCH_FEED_PARTS", "1,2,3").split(",") if p.strip()}


# --- processes ----------------------------------------------------------------------------


class Children:
    """Every child this bench started, stopped in reverse order at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.all: list[Child] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        ready: Callable[[dict[str, Any]], bool] | None,
        profile_prefix: Path | None = None,
        timeout: float = START_SECONDS,
    ) -> Child:
        """bench.children.spawn, logging to FOLDER/NAME.log; the child is stopped at the end."""
        child = spawn(name, argv, env, self.folder / f"{name}.log", ready, profile_prefix, timeout)
        self.all.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()

    def stop_all(self) -> None:
        for child in reversed(self.all):
            try:
                child.stop()
            except Exception as error:
                print(f"  stopping {child.name} failed: {error!r}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "AUTH_MODE": "dev",
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": "0",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "INFO",
        **extra,
    }
    for name in ("SERVICE_TOKEN", "KUBERNETES_SERVICE_HOST", "DHAN_ACCESS_TOKEN", "DHAN_CLIENT_ID"):
        if name not in extra:
            env.pop(name, None)
    return env


def _http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _metrics(port: int, prefix: tuple[str, ...] = ("feed_", "event_loop_lag_seconds")) -> dict[str, float]:
    """Prometheus text of a /metrics endpoint: {series: value} for names starting with prefix."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# --- the simulator ------------------------------------------------------------------------


_OPTION_KINDS = {"OPTIDX", "OPTSTK", "OPTFUT", "OPTCUR"}


def _sim_master(folder: Path, csv_path: Path, prices_path: Path, option_ids: set[int], name: str) -> Path:
    """A copy of the master for the simulator: every non-option row, and the option rows
    whose security id is in `option_ids` (parsing the whole full master takes it ~6 s,
    this a second; ids and prices are the registry's)."""
    out = folder / f"{name}.csv"
    kept: set[str] = set()
    with csv_path.open(newline="", encoding="utf-8") as src, out.open("w", newline="", encoding="utf-8") as dst:
        reader = csv.reader(src)
        writer = csv.writer(dst)
        header = next(reader)
        writer.writerow(header)
        kind, sid = header.index("SEM_INSTRUMENT_NAME"), header.index("SEM_SMST_SECURITY_ID")
        for row in reader:
            if row[kind] not in _OPTION_KINDS or int(row[sid]) in option_ids:
                writer.writerow(row)
                kept.add(row[sid])
    with (
        prices_path.open(newline="", encoding="utf-8") as src,
        (folder / f"{name}.prices.csv").open("w", newline="", encoding="utf-8") as dst,
    ):
        reader = csv.reader(src)
        writer = csv.writer(dst)
        header = next(reader)
        writer.writerow(header)
        sid = header.index("SECURITY_ID")
        for row in reader:
            if row[sid] in kept:
                writer.writerow(row)
    return out


def _start_simulator(
    children: Children,
    name: str,
    master: Path,
    port: int,
    *,
    burst: bool,
    rate: float,
    ticks_per_second: float = 1.0,
    extra: Sequence[str] = (),
) -> Child:
    """The simulator CLI; `rate` sets both caps (per connection and in total)."""
    args = [
        "--host", "127.0.0.1", "--port", str(port), "--control-port", "0", "--master", str(master),
        "--connection-rate-cap", f"{rate}", "--total-rate-cap", f"{rate}", "--ticks-per-second", f"{ticks_per_second}",
        "--seed", "1", "--log-level", "INFO", *extra,
    ]  # fmt: skip
    if burst:
        args.append("--burst")
    prefix = children.folder / name if PROFILE else None
    argv = ["-m", "bench._profiled_feed", str(prefix), "simulator", *args] if prefix else ["-m", "simulator", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIM_")}  # keeps BENCH_PROFILE
    return children.spawn(name, argv, env, lambda r: r.get("msg") == "feed simulator listening", prefix)


def _caps(rate: float) -> float:
    """The simulator's rate caps for a paced run: room for catching up, and high enough that
    the debt a subscription burst leaves in its token buckets (every prev-close and snapshot
    packet is charged) is paid back in well under a second; the pacing (ticks per second per
    instrument) is what sets the offered rate."""
    return max(1.5 * rate, 100_000.0)


def _sim_packets(sim: Child) -> int:
    return int(_http_json(f"http://127.0.0.1:{sim.info['control_port']}/health")["packets_sent"])


# --- 1. ingest ----------------------------------------------------------------------------


def _ingest_run(
    children: Children, kind: str, sim: Child, instruments: list[tuple[str, int]], **extra: Any
) -> dict[str, Any]:
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
        ["-m", "bench._feed_clients", "ingest", json.dumps(spec)],
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
    out, pos = [], 0
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
    import zlib

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


def _part_ingest(report: Report, children: Children, folder: Path, csv_path: Path, prices_path: Path) -> None:
    from simulator.catalog import Catalog

    master = _sim_master(folder, csv_path, prices_path, set(), "sim-ingest-master")
    catalog = Catalog.load(master)
    equities = sorted(c.key for c in catalog.contracts() if c.kind == "equity")
    instruments = [list(k) for k in random.Random(3).sample(equities, INGEST_INSTRUMENTS)]
    plain = _start_simulator(children, "sim-ingest", master, 0, burst=True, rate=1e7)
    deflate = _start_simulator(
        children, "sim-ingest-deflate", master, 0, burst=True, rate=1e7, extra=["--permessage-deflate"]
    )
    report.note(
        f"{INGEST_INSTRUMENTS} equities (FULL, one packet per frame) on one connection; simulators in burst "
        f"mode, caps 1e7/s; each client {INGEST_SECONDS:.0f} s after a 1 s warm-up, in its own process"
    )

    # (A) against the simulator itself; the raw run records what it receives for (B).
    recording = folder / "recording.bin"
    sim_runs: dict[str, dict[str, Any]] = {}
    for label, sim, kind, extra in (
        ("raw", plain, "raw", {"record_path": str(recording), "record_bytes": RECORD_BYTES}),
        ("websockets", plain, "websockets", {"compression": None}),
        ("picows", plain, "picows", {}),
        ("ours", plain, "ours", {}),
        ("dhanhq", plain, "dhanhq", {}),
        ("websockets_deflate", deflate, "websockets", {"compression": "deflate"}),
    ):
        sim_runs[label] = _ingest_run(children, kind, sim, instruments, **extra)
        _describe(report, f"simulator: {label}", sim_runs[label], "simulator")
    plain.stop()
    deflate.stop()

    # (B) against a replay of the simulator's own frames (bench._feed_clients replay): the
    # feed costs next to no CPU, so each client is bound by itself.
    spec = {"record_path": str(recording), "lifetime": 120}
    replay = children.spawn(
        "replay",
        ["-m", "bench._feed_clients", "replay", json.dumps(spec)],
        dict(os.environ),
        lambda r: r.get("msg") == "replay listening",
    )
    replay_runs: dict[str, dict[str, Any]] = {}
    try:
        for label in ("websockets", "picows", "ours", "dhanhq"):
            replay_runs[label] = _ingest_run(
                children, label, replay, instruments, **({"compression": None} if label == "websockets" else {})
            )
            _describe(report, f"replay: {label}", replay_runs[label], "replay")
    finally:
        replay.stop()

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
    report.add(
        "feed.ingest.ours_vs_websockets",
        replay_runs["ours"]["rate"] / replay_runs["websockets"]["rate"],
        "x",
        target=OURS_VS_WEBSOCKETS_TARGET,
        op=">=",
    )
    report.add(
        "feed.ingest.ours_vs_dhanhq",
        replay_runs["ours"]["rate"] / replay_runs["dhanhq"]["rate"],
        "x",
        target=OURS_VS_DHANHQ_TARGET,
        op=">=",
    )
    cost = {label: r["us_per_frame"] for label, r in replay_runs.items()}
    report.add("feed.ingest.cpu_per_frame_ours_us", cost["ours"], "us")
    report.note(
        "client CPU per frame against the replay: "
        + ", ".join(f"{label} {us:.2f} us" for label, us in cost.items())
        + f"; websockets/ours {cost['websockets'] / cost['ours']:.2f}x, dhanhq/ours {cost['dhanhq'] / cost['ours']:.2f}x"
    )

    ws, wd = sim_runs["websockets"], sim_runs["websockets_deflate"]
    negotiated = "permessage-deflate" in wd.get("extensions", "")
    payloads = _frames(recording.read_bytes()[: 8 << 20], 20_000)
    mean_size = sum(len(p) for p in payloads) / max(1, len(payloads))
    report.note(
        f"deflate: the simulator as it is declines permessage-deflate (extensions {ws.get('extensions', '')!r}), so "
        f"websockets' default and compression=None are the same there; with --permessage-deflate it was "
        f"{'negotiated' if negotiated else 'NOT negotiated'} ({wd.get('extensions', '')!r}): {wd['rate']:.0f}/s vs "
        f"{ws['rate']:.0f}/s uncompressed ({wd['rate'] / ws['rate']:.2f}x); client {wd['us_per_frame']:.2f} vs "
        f"{ws['us_per_frame']:.2f} us/frame; simulator CPU {wd['sim_share']:.2f} vs {ws['sim_share']:.2f}, i.e. "
        f"{wd['sim_cpu'] / max(1, wd['frames']) * 1e6:.1f} vs {ws['sim_cpu'] / max(1, ws['frames']) * 1e6:.1f} us of "
        f"simulator CPU per frame; on the wire a {mean_size:.0f}-byte Full packet deflates to ~{_deflated_size(payloads):.0f} "
        f"bytes (this stream, 12-bit window, context kept)"
    )
    report.note(
        f"ours: {replay_runs['ours'].get('packets_per_flush', 0):.1f} packets per read burst against the replay, "
        f"protocol errors {replay_runs['ours'].get('protocol_errors')}; dhanhq sampled types "
        f"{replay_runs['dhanhq'].get('sampled_types')}"
    )


# --- the stack: database, registry, subscription service, the filled pool -------------------


@dataclass
class Stack:
    conninfo: str
    registry_address: str
    subscription: Child
    keys: list[tuple[int, int]]  # (proto segment, security id) of every subscribed instrument
    shard_loads: dict[int, int]


async def _fill(
    report: Report, registry_address: str, subscription_address: str
) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """Adds distinct stock option units (stock + 50 options) until one more would not fit."""
    import grpc
    from dataserver.subscription.v1 import subscription_pb2 as pb
    from dataserver.subscription.v1 import subscription_pb2_grpc

    from bench.subscription import _add, _units

    capacity = CAPACITY_CONNECTIONS * PER_CONNECTION
    pairs = await _units(registry_address)
    queue = list(reversed(pairs))
    held: set[tuple[int, int]] = set()
    in_flight = [0]
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + 180

    async with grpc.aio.insecure_channel(subscription_address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = subscription_pb2_grpc.SubscriptionServiceStub(channel)

        async def client(n: int) -> None:
            while queue and time.monotonic() < deadline:
                if len(held) + (in_flight[0] + 1) * UNIT_SIZE > capacity:
                    return
                pair = queue.pop()
                in_flight[0] += 1
                try:
                    result = await _add(stub, pb, pair, f"bench-feed-{n}")
                except Exception as error:
                    errors[type(error).__name__] += 1
                    continue
                finally:
                    in_flight[0] -= 1
                held.update(result.instruments)

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(FILL_CLIENTS)))
        status = await stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), timeout=RPC_SECONDS)
        loads = {s.shard_id: s.instrument_count for s in status.shards}
        report.note(
            f"filled the pool with watchlist adds in {time.perf_counter() - started:.1f} s: {status.subscribed_count} "
            f"of {status.capacity} subscribed, per shard {loads}" + (f", add errors {dict(errors)}" if errors else "")
        )
    return sorted(held), loads


# --- 2. one shard process -----------------------------------------------------------------


def _start_shard(children: Children, stack: Stack, shard_id: int, sim_port: int) -> Child:
    env = _service_env(
        SHARD_ID=str(shard_id),
        FEED_URL=f"ws://127.0.0.1:{sim_port}",
        SUBSCRIPTION_ADDR=stack.subscription.address,
        REGISTRY_ADDR=stack.registry_address,
        FEED_CONNECTIONS="1",
        FEED_MARKET_HOURS_ONLY="false",
        FEED_MAX_BACKOFF_SECONDS="0.5",
        DHAN_CLIENT_ID=f"bench-shard-{shard_id}",
        MASTER_SOURCE="generated",
    )
    prefix = children.folder / f"shard-{shard_id}" if PROFILE and shard_id == 0 else None
    argv = ["-m", "bench._profiled_feed", str(prefix), "shard"] if prefix else ["-m", "services.feed", "shard"]
    return children.spawn(f"shard-{shard_id}", argv, env, service_started, prefix)


async def _shard_status(address: str) -> Any:
    import grpc
    from dataserver.feed.v1 import shard_pb2, shard_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        return (
            await shard_pb2_grpc.ShardServiceStub(channel).GetStatus(shard_pb2.GetStatusRequest(), timeout=RPC_SECONDS)
        ).status


async def _wait_subscribed(addresses: Sequence[str], expected: Sequence[int], timeout: float = 30.0) -> list[Any]:
    """Until every shard is connected with all its assigned instruments subscribed."""
    from dataserver.feed.v1 import feed_pb2

    deadline = time.monotonic() + timeout
    while True:
        statuses = [await _shard_status(a) for a in addresses]
        if all(
            s.connection_state == feed_pb2.CONNECTION_STATE_CONNECTED
            and s.instruments_assigned == n
            and s.instruments_subscribed == n
            for s, n in zip(statuses, expected)
        ):
            return statuses
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"shards not subscribed after {timeout:.0f} s: "
                + "; ".join(
                    f"#{s.shard_id} state {s.connection_state} {s.instruments_subscribed}/{s.instruments_assigned}"
                    for s in statuses
                )
            )
        await asyncio.sleep(0.2)


def _hist_ms(hist: Counter[int], p: float) -> float:
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


async def _consume_shard(
    address: str, warmup: float, window: float, on_window: Callable[[str], None]
) -> dict[str, Any]:
    """Reads StreamShardTicks like the gateway does, timing each record of the window."""
    import grpc
    from dataserver.feed.v1 import shard_pb2, shard_pb2_grpc

    from services.dhan.protocol import split_head
    from services.feed.records import RECORD_HEAD

    unpack_record = RECORD_HEAD.unpack_from
    hist: Counter[int] = Counter()  # shard receipt -> here, 0.1 ms buckets
    sim_hist: Counter[int] = Counter()  # simulator send stamp -> shard receipt
    last_seq: dict[int, int] = {}
    out = {"records": 0, "messages": 0, "gaps": 0, "seconds": 0.0, "opening": []}
    phase = 0  # 0 waiting for packets, 1 warm-up, 2 window, 3 done
    due = 0.0
    options = [("grpc.max_receive_message_length", 32 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = shard_pb2_grpc.ShardServiceStub(channel).StreamShardTicks(
            shard_pb2.StreamShardTicksRequest(gateway_id="bench")
        )
        hard = time.monotonic() + warmup + window + 60
        started = 0.0
        async for message in call:
            now = time.perf_counter()
            body = message.WhichOneof("body")
            if body != "packets":
                if phase == 0:
                    out["opening"].append(body)
                continue
            if phase == 0:
                phase, due = 1, now + warmup
            elif phase == 1 and now >= due:
                phase, due, started = 2, now + window, now
                on_window("start")
            elif phase == 2 and now >= due:
                out["seconds"] = now - started
                on_window("end")
                call.cancel()
                break
            if time.monotonic() > hard:
                raise TimeoutError("the shard stream did not give a full window")
            if phase != 2:
                continue
            records = message.packets.records
            now_us = time.time_ns() // 1000
            size = len(records)
            offset = 0
            count = 0
            while offset < size:
                sequence, received_us, head = unpack_record(records, offset)
                code, length, key = split_head(head)
                previous = last_seq.get(key)
                if previous is not None and sequence != previous + 1:
                    out["gaps"] += 1
                last_seq[key] = sequence
                hist[(now_us - received_us) // 100] += 1
                if code == 8:
                    stamp = int.from_bytes(records[offset + 38 : offset + 42], "little", signed=True)
                    sim_hist[int(((received_us / 1000.0) % MS_PER_DAY - stamp) % MS_PER_DAY * 10)] += 1
                offset += 16 + length
                count += 1
            out["records"] += count
            out["messages"] += 1
    out["hist"], out["sim_hist"] = hist, sim_hist
    return out


def _part_shard(report: Report, children: Children, stack: Stack, sim_master: Path, sim_port: int) -> Child:
    """Returns the shard 0 process, left running for part 3."""
    n0 = stack.shard_loads.get(0, 0)
    per_instrument = SHARD_RATE / n0
    sim = _start_simulator(
        children,
        "sim-shard",
        sim_master,
        sim_port,
        burst=False,
        rate=_caps(SHARD_RATE),
        ticks_per_second=per_instrument,
        extra=["--stamp-send-time"],
    )
    shard = _start_shard(children, stack, 0, sim_port)
    shard_address = f"127.0.0.1:{shard.info['port']}"
    asyncio.run(_wait_subscribed([shard_address], [n0]))
    report.note(
        f"shard 0 process pid {shard.pid} with {n0} instruments, simulator paced at {per_instrument:.2f} ticks/s "
        f"per instrument = {SHARD_RATE:.0f} packets/s offered (caps {_caps(SHARD_RATE):.0f}/s)"
    )
    me = os.getpid()
    marks: dict[str, dict[str, float]] = {}

    def on_window(edge: str) -> None:
        marks[edge] = {
            "t": time.perf_counter(),
            "sim": sim.cpu(),
            "shard": shard.cpu(),
            "bench": cpu_seconds(me),
            "sent": _sim_packets(sim),
        }
        if edge == "end":
            shard.profile_phase("2. shard at 50k/s")
            sim.profile_phase("2. shard at 50k/s")

    result = asyncio.run(_consume_shard(shard_address, 2.0, SHARD_WINDOW_SECONDS, on_window))
    status = asyncio.run(_shard_status(shard_address))
    elapsed = marks["end"]["t"] - marks["start"]["t"]
    rate = result["records"] / result["seconds"]
    sent_rate = (marks["end"]["sent"] - marks["start"]["sent"]) / elapsed
    share = {k: (marks["end"][k] - marks["start"][k]) / elapsed for k in ("sim", "shard", "bench")}
    report.add("feed.shard.offered", SHARD_RATE, "packets/s")
    report.add("feed.shard.simulator_sent", sent_rate, "packets/s")
    report.add("feed.shard.achieved", rate, "packets/s", target=SHARD_RATE * SUSTAINED, op=">=")
    report.add("feed.shard.p50_ms", _hist_ms(result["hist"], 50), "ms")
    report.add("feed.shard.p99_ms", _hist_ms(result["hist"], 99), "ms", target=SHARD_P99_TARGET_MS)
    report.add("feed.shard.max_ms", _hist_ms(result["hist"], 100), "ms")
    report.add("feed.shard.gaps", result["gaps"], target=0)
    report.add("feed.shard.rss_mb", shard.rss_mb(), "MB", target=SHARD_RSS_TARGET_MB)
    report.note(
        f"window {result['seconds']:.1f} s: {result['records']} records in {result['messages']} stream messages "
        f"({result['records'] / max(1, result['messages']):.0f} per message); simulator send -> shard receipt p50 "
        f"{_hist_ms(result['sim_hist'], 50):.1f} ms, p99 {_hist_ms(result['sim_hist'], 99):.1f} ms (1 ms stamps)"
    )
    report.note(
        f"CPU share over the window: simulator {share['sim']:.2f}, shard {share['shard']:.2f}, bench reader "
        f"{share['bench']:.2f}; shard status: frames {status.frames_received}, packets {status.packets_received}, "
        f"protocol errors {status.protocol_errors}, reconnects {status.reconnect_count}; peak RSS {shard.hwm_mb():.0f} MB"
    )
    sim.stop()
    return shard


# --- 3. end to end ------------------------------------------------------------------------


@dataclass
class Terminals:
    processes: list[Any]
    pipes: list[Any]

    def ask(
        self, command: str, arg: Any = None, timeout: float = 30.0, only: int | None = None
    ) -> list[dict[str, Any]]:
        targets = range(len(self.pipes)) if only is None else [only]
        for i in targets:
            self.pipes[i].send((command, arg))
        answers = []
        for i in targets:
            if not self.pipes[i].poll(timeout):
                raise TimeoutError(f"terminal process {i} did not answer {command!r}")
            answer = self.pipes[i].recv()
            if answer.get("event") == "error":
                raise RuntimeError(f"terminal process {i} failed:\n{answer['traceback']}")
            answers.append(answer)
        return answers

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop", None))
            except OSError:
                pass
        for process in self.processes:
            stop_spawned(process)
        for pipe in self.pipes:
            pipe.close()


def _start_terminals(
    folder: Path, address: str, streams: list[list[tuple[int, int]]], stalled: list[tuple[int, int]], lifetime: float
) -> Terminals:
    import multiprocessing

    from bench._feed_clients import terminal_child

    context = multiprocessing.get_context("spawn")
    processes, pipes = [], []
    terminals = Terminals(processes, pipes)
    try:
        for n in range(TERMINAL_PROCESSES):
            parent, child = context.Pipe()
            spec = {
                "address": address,
                "streams": streams[n::TERMINAL_PROCESSES],
                "channels": TERMINAL_CHANNELS,
                "stalled": stalled if n == 0 else [],
                "lifetime": lifetime,
            }
            process = context.Process(
                target=terminal_child,
                args=(child, str(folder / f"terminals-{n}.log"), spec),
                name=f"bench-terminals-{n}",
                daemon=True,
            )
            process.start()
            child.close()
            processes.append(process)
            pipes.append(parent)
        for n, pipe in enumerate(pipes):
            if not pipe.poll(60):
                raise TimeoutError(f"terminal process {n} not ready after 60 s")
            answer = pipe.recv()
            if answer.get("event") != "ready":
                raise RuntimeError(f"terminal process {n} failed:\n{answer.get('traceback', answer)}")
    except BaseException:
        terminals.stop()
        raise
    return terminals


def _merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {
        "ticks": 0,
        "stamped": 0,
        "gaps": 0,
        "gap_events": 0,
        "batches": 0,
        "events": Counter(),
        "latency": Counter(),
        "shard_part": Counter(),
        "sim_part": Counter(),
        "gateway_part": Counter(),
        "transit": Counter(),
        "seconds": 0.0,
        "cpu": [],
        "streams_open": 0,
        "errors": Counter(),
        "instruments": 0,
    }
    for s in summaries:
        for k in ("ticks", "stamped", "gaps", "gap_events", "batches", "streams_open", "instruments"):
            total[k] += s[k]
        for k in ("events", "errors"):
            total[k].update(s[k])
        for k in ("latency", "shard_part", "sim_part", "gateway_part", "transit"):
            total[k].update({int(b): n for b, n in s[k].items()})
        total["seconds"] = max(total["seconds"], s["seconds"])
        total["cpu"].append(s["cpu"] / s["seconds"])
    return total


@dataclass
class Step:
    rate: float
    delivered: float
    p50: float
    p99: float
    max: float
    gaps: int
    sent: float
    shares: dict[str, float]
    merged: dict[str, Any]
    machine: MachineWindow

    @property
    def sustained(self) -> bool:
        return self.delivered >= SUSTAINED * self.rate

    @property
    def meets(self) -> bool:
        return self.sustained and self.p99 <= E2E_P99_TARGET_MS and self.gaps == 0


def _e2e_step(
    report: Report,
    children: Children,
    sim_master: Path,
    sim_port: int,
    rate: float,
    total: int,
    shards: list[Child],
    gateway: Child,
    terminals: Terminals,
    shard_addresses: list[str],
    loads: list[int],
) -> Step:
    name = f"sim-e2e-{rate:.0f}"
    applied_before = _metrics(gateway.info["metrics_port"]).get("feed_gateway_packets_total", 0.0)
    sim = _start_simulator(
        children,
        name,
        sim_master,
        sim_port,
        burst=False,
        rate=_caps(rate),
        ticks_per_second=rate / total,
        extra=["--stamp-send-time"],
    )
    try:
        asyncio.run(_wait_subscribed(shard_addresses, loads))
        # The reconnect sends a prev close and a snapshot per instrument (2 x 25k packets):
        # wait until the gateway has applied what the simulator sent (within 50 ms of
        # ticks), so that burst is not measured as the rate's latency.
        caught_up = time.perf_counter() + E2E_CATCH_UP_SECONDS
        while time.perf_counter() < caught_up:
            applied = _metrics(gateway.info["metrics_port"]).get("feed_gateway_packets_total", 0.0) - applied_before
            if applied >= _sim_packets(sim) - max(200.0, 0.05 * rate):
                break
            time.sleep(0.2)
        lag_at_start = _sim_packets(sim) - (
            _metrics(gateway.info["metrics_port"]).get("feed_gateway_packets_total", 0.0) - applied_before
        )
        time.sleep(E2E_WARMUP_SECONDS)
        processes = {"simulator": sim, "gateway": gateway, **{f"shard{i}": s for i, s in enumerate(shards)}}
        term_pids = [p.pid for p in terminals.processes]
        metrics0 = _metrics(gateway.info["metrics_port"])
        cpu0 = {k: c.cpu() for k, c in processes.items()}
        tcpu0 = [cpu_seconds(pid) for pid in term_pids]
        for child in (sim, gateway, shards[0]):
            child.profile_phase(f"3. start-up and warm-up of {rate:.0f}/s")  # so the window's profile is its own
        sent0, t0 = _sim_packets(sim), time.perf_counter()
        terminals.ask("window", name)
        machine = MachineSampler().start()
        time.sleep(E2E_WINDOW_SECONDS)
        summaries = [a["summary"] for a in terminals.ask("end")]
        elapsed = time.perf_counter() - t0
        box = machine.stop()
        sent1 = _sim_packets(sim)
        cpu1 = {k: c.cpu() for k, c in processes.items()}
        tcpu1 = [cpu_seconds(pid) for pid in term_pids]
        metrics1 = _metrics(gateway.info["metrics_port"])
        for child in (sim, gateway, shards[0]):
            child.profile_phase(f"3. end to end at {rate:.0f}/s")
    finally:
        sim.stop()
    drain = _drain(gateway)
    merged = _merge(summaries)
    shares = {k: (cpu1[k] - cpu0[k]) / elapsed for k in cpu0}
    for n, (a, b) in enumerate(zip(tcpu0, tcpu1)):
        shares[f"terminals{n}"] = (b - a) / elapsed
    delivered = merged["ticks"] / merged["seconds"]
    step = Step(
        rate,
        delivered,
        _hist_ms(merged["latency"], 50),
        _hist_ms(merged["latency"], 99),
        _hist_ms(merged["latency"], 100),
        merged["gaps"],
        (sent1 - sent0) / elapsed,
        shares,
        merged,
        box,
    )
    applied = metrics1.get("feed_gateway_packets_total", 0) - metrics0.get("feed_gateway_packets_total", 0)
    conflated = metrics1.get("feed_gateway_conflated_total", 0) - metrics0.get("feed_gateway_conflated_total", 0)
    report.note(
        f"offered {rate:.0f}/s: simulator sent {step.sent:.0f}/s, gateway applied {applied / elapsed:.0f}/s, terminals got "
        f"{delivered:.0f} ticks/s in {merged['batches'] / merged['seconds']:.0f} batches/s "
        f"({merged['ticks'] / max(1, merged['batches']):.1f} ticks per batch); latency p50 {step.p50:.1f} p99 {step.p99:.1f} "
        f"max {step.max:.1f} ms; gaps {step.gaps} ({merged['gap_events']} events), conflated at the gateway "
        f"{conflated:.0f}; streams open {merged['streams_open']}, stream errors {dict(merged['errors']) or 'none'}"
        + (f", events {dict(merged['events'])}" if merged["events"] else "")
        + f"; gateway {lag_at_start:.0f} packets behind the simulator before the warm-up; backlog drained {drain:.1f} s "
        f"after the simulator stopped; gateway RSS {gateway.rss_mb():.0f} MB"
    )
    report.note(
        f"  split (sampled): simulator send -> shard receipt p50 {_hist_ms(merged['sim_part'], 50):.1f} p99 "
        f"{_hist_ms(merged['sim_part'], 99):.1f} ms; shard receipt -> terminal p50 {_hist_ms(merged['shard_part'], 50):.1f} "
        f"p99 {_hist_ms(merged['shard_part'], 99):.1f} ms, of which shard receipt -> gateway send (TickBatch.sent_at) p50 "
        f"{_hist_ms(merged['gateway_part'], 50):.1f} p99 {_hist_ms(merged['gateway_part'], 99):.1f} ms; per batch, gateway "
        f"send -> terminal p50 {_hist_ms(merged['transit'], 50):.1f} p99 {_hist_ms(merged['transit'], 99):.1f} ms"
    )
    harness = shares["simulator"] + sum(v for k, v in shares.items() if k.startswith("terminals"))
    report.note(
        "  CPU share: "
        + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
        + f"; total {sum(shares.values()):.2f} of {box.cores} cores, of which the load (simulator and terminals) "
        f"{harness:.2f} and the system under test (shards and gateway) {sum(shares.values()) - harness:.2f}"
    )
    report.note("  " + box.describe())
    report.note(
        f"  gateway event loop: {_loop_lag(metrics0, metrics1)}; at the gateway, ingest lag "
        f"{_histogram_quantiles(metrics0, metrics1, 'feed_gateway_ingest_lag_seconds')}, batch wait "
        f"{_histogram_quantiles(metrics0, metrics1, 'feed_gateway_batch_wait_seconds')}, write "
        f"{_histogram_quantiles(metrics0, metrics1, 'feed_gateway_batch_write_seconds')}"
    )
    return step


def _histogram_quantiles(before: dict[str, float], after: dict[str, float], name: str) -> str:
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


def _loop_lag(before: dict[str, float], after: dict[str, float]) -> str:
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


def _drain(gateway: Child, limit: float = 40.0) -> float:
    """After the simulator stops: until the gateway has applied and sent everything the
    shards had queued (its counters still for 0.6 s), so the next rate starts clean.
    Returns the seconds it took (limit: gave up)."""
    started = time.perf_counter()
    names = ("feed_gateway_packets_total", "feed_gateway_ticks_sent_total")
    last = None
    still_since = started
    while time.perf_counter() - started < limit:
        metrics = _metrics(gateway.info["metrics_port"])
        now = tuple(metrics.get(n, 0.0) for n in names)
        if now != last:
            last, still_since = now, time.perf_counter()
        elif time.perf_counter() - still_since >= 0.6:
            return still_since - started
        time.sleep(0.2)
    return limit


def _value_sizes() -> tuple[float, float]:
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


def _part_e2e(
    report: Report, children: Children, folder: Path, stack: Stack, sim_master: Path, sim_port: int, shard0: Child
) -> None:
    import grpc
    from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc

    total = len(stack.keys)
    loads = [stack.shard_loads.get(i, 0) for i in range(CAPACITY_CONNECTIONS)]
    shards = [shard0] + [_start_shard(children, stack, i, sim_port) for i in range(1, CAPACITY_CONNECTIONS)]
    shard_addresses = [f"127.0.0.1:{s.info['port']}" for s in shards]
    env = _service_env(
        DATABASE_URL=stack.conninfo,
        DATASERVER_DATA_DIR=str(folder),
        SUBSCRIPTION_ADDR=stack.subscription.address,
        REGISTRY_ADDR=stack.registry_address,
        GATEWAY_SHARD_ADDRS=",".join(shard_addresses),
    )
    prefix = folder / "gateway" if PROFILE else None
    argv = ["-m", "bench._profiled_feed", str(prefix), "gateway"] if prefix else ["-m", "services.feed", "gateway"]
    gateway = children.spawn("gateway", argv, env, service_started, prefix)
    address = f"127.0.0.1:{gateway.info['port']}"

    async def gateway_ready() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = feed_pb2_grpc.GatewayServiceStub(channel)
            deadline = time.monotonic() + 30
            while True:
                reply = await stub.GetShardStatus(feed_pb2.GetShardStatusRequest(), timeout=RPC_SECONDS)
                if len(reply.shards) == len(shards) and all(s.reachable for s in reply.shards):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the gateway does not reach every shard: {reply}")
                await asyncio.sleep(0.2)

    asyncio.run(gateway_ready())
    keys = list(stack.keys)
    random.Random(SEED_SHUFFLE).shuffle(keys)
    streams = [keys[i : i + PER_STREAM] for i in range(0, min(len(keys), STREAMS * PER_STREAM), PER_STREAM)]
    stalled = streams[0]  # the same instruments as a live stream
    rss_idle = gateway.rss_mb()
    terminals = _start_terminals(folder, address, streams, stalled, lifetime=400)
    try:
        rss_streams = gateway.rss_mb()
        report.note(
            f"{len(shards)} shard processes (instruments {loads}), gateway pid {gateway.pid}; {len(streams)} streams of "
            f"{PER_STREAM} ({sum(len(s) for s in streams)} instruments) in {TERMINAL_PROCESSES} processes x "
            f"{TERMINAL_CHANNELS} channels, + 1 stalled stream of {len(stalled)} on its own channel; gateway RSS "
            f"{rss_idle:.0f} MB before the streams, {rss_streams:.0f} MB with them"
        )
        steps: list[Step] = []
        first = _e2e_step(
            report, children, sim_master, sim_port, E2E_RATE, total, shards, gateway, terminals, shard_addresses, loads
        )
        steps.append(first)
        gateway_rss = gateway.rss_mb()
        shard_rss = [s.rss_mb() for s in shards]
        metrics = _metrics(gateway.info["metrics_port"])
        report.add("feed.e2e.offered", E2E_RATE, "ticks/s")
        report.add("feed.e2e.delivered", first.delivered, "ticks/s", target=E2E_RATE * SUSTAINED, op=">=")
        report.add("feed.e2e.p50_ms", first.p50, "ms")
        report.add("feed.e2e.p99_ms", first.p99, "ms", target=E2E_P99_TARGET_MS)
        report.add("feed.e2e.gaps", first.gaps, target=0)
        report.add("feed.e2e.gateway_rss_mb", gateway_rss, "MB", target=GATEWAY_RSS_TARGET_MB)
        report.add("feed.e2e.shard_rss_max_mb", max(shard_rss), "MB", target=SHARD_RSS_TARGET_MB)
        report.add("feed.e2e.machine_idle", first.machine.idle_share * 100, "%")  # how saturated the box was for p99
        report.add("feed.e2e.machine_run_queue", first.machine.run_queue_mean, "tasks")
        raw, encoded = _value_sizes()
        from services.feed.gateway.hub import HISTORY

        report.note(
            "shard RSS: "
            + ", ".join(f"#{i} {r:.0f} MB" for i, r in enumerate(shard_rss))
            + f"; gateway RSS {rss_streams:.0f} MB before the ticks, peak {gateway.hwm_mb():.0f} MB. A gateway "
            f"Value of a Full packet holds {raw:.0f} B (Value + raw packet) and {encoded:.0f} B encoded: {total} "
            f"instruments x HISTORY {HISTORY} x {raw + encoded:.0f} B = "
            f"{total * HISTORY * (raw + encoded) / 2**20:.0f} MB once every history is full"
        )
        report.note(
            "gateway metrics after the first rate: "
            + ", ".join(
                f"{k} {v:.0f}"
                for k, v in sorted(metrics.items())
                if k.startswith("feed_") and not k.endswith("_created")
            )
        )

        # Then a bisection towards the highest rate that meets every target (or E2E_RATE
        # again if it met them). The stalled stream stalls during the second step, when
        # every instrument's history is full already, so the gateway's RSS over that step
        # shows what the stall itself costs.
        low, high = 0.0, E2E_RATE
        for index in range(E2E_EXTRA_RATES if not first.meets else 1):
            rate = E2E_RATE if first.meets else round((low + high) / 2 if low else high / 2, -2)
            if index == 0:
                rss_before = gateway.rss_mb()
                (opened,) = terminals.ask("stall", only=0)
            step = _e2e_step(
                report, children, sim_master, sim_port, rate, total, shards, gateway, terminals, shard_addresses, loads
            )
            steps.append(step)
            if index == 0:
                rss_after = gateway.rss_mb()
                before = _metrics(gateway.info["metrics_port"]).get("feed_gateway_conflated_total", 0.0)
                (resumed,) = terminals.ask("resume", only=0)
                after = _metrics(gateway.info["metrics_port"]).get("feed_gateway_conflated_total", 0.0)
                _report_stall(
                    report, len(stalled), opened["summary"], resumed["summary"], rss_before, rss_after, after - before
                )
            if step.meets:
                low = rate
            else:
                high = rate
        for s in steps[1:]:
            report.add(f"feed.e2e.at_{s.rate:.0f}.delivered", s.delivered, "ticks/s")
            report.add(f"feed.e2e.at_{s.rate:.0f}.p99_ms", s.p99, "ms")
        best = max((s for s in steps if s.meets), key=lambda s: s.rate, default=None)
        sustained = max((s for s in steps if s.sustained), key=lambda s: s.rate, default=None)
        report.add("feed.e2e.highest_rate_meeting_targets", best.rate if best else 0.0, "ticks/s")
        if best is not None:
            report.note(
                f"at {best.rate:.0f}/s: delivered {best.delivered:.0f}/s, p50 {best.p50:.1f} ms, p99 {best.p99:.1f} ms, "
                f"gaps {best.gaps}"
            )
        if sustained is not None and sustained is not best:
            report.note(
                f"highest rate sustained (>= {SUSTAINED:.0%} delivered) whatever the latency: {sustained.rate:.0f}/s "
                f"(p99 {sustained.p99:.1f} ms)"
            )
        report.note(
            "rates tried: "
            + "; ".join(
                f"{s.rate:.0f} -> {s.delivered:.0f}/s p99 {s.p99:.1f} ms gaps {s.gaps} {'OK' if s.meets else 'miss'}"
                for s in steps
            )
        )
    finally:
        terminals.stop()
        for n in range(TERMINAL_PROCESSES):
            log = folder / f"terminals-{n}.log"
            if log.exists() and log.stat().st_size:
                report.note(f"terminals-{n}.log: {log.read_text(errors='replace')[-600:]}")


SEED_SHUFFLE = 11


def _report_stall(
    report: Report,
    size: int,
    opened: dict[str, Any],
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


# --- profiles -------------------------------------------------------------------------------


def _report_profiles(children: Children) -> None:
    for child in children.all:
        for phase, path in child.profiles:
            gc_path = Path(str(path)[: -len(".prof")] + ".gc.json")
            if gc_path.exists():
                data = json.loads(gc_path.read_text())
                gens = ", ".join(
                    f"gen{g}: {n} collections, {total:.0f} ms in all, longest {longest:.1f} ms"
                    for g, (n, total, longest) in data["generations"].items()
                )
                long = data["long_pauses"]
                print(
                    f"  --- GC pauses of {child.name}, phase {phase}: {gens}; {data['tracked_objects']} tracked objects "
                    f"at the end; pauses >= 10 ms [generation, wall ms, CPU ms, collected]: {len(long)} {long[:12]}"
                )
            if path.stat().st_size == 0:
                continue  # BENCH_PROFILE=gc: no cProfile
            print_profile(path, f"{child.name}, phase {phase}")


# --- the benchmark ------------------------------------------------------------------------


def run(report: Report) -> None:

    from bench.registry import SEED, TRADING_DATE, registry_child
    from services.registry.sources import from_generator

    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        folder = Path(tmp)
        children = Children(folder)
        try:
            master = from_generator(folder / "masters", TRADING_DATE, SEED, "full")
            if 1 in PARTS:
                _part_ingest(report, children, folder, master.csv_path, master.prices_path)
            if not PARTS & {2, 3}:
                return

            began = time.perf_counter()
            with bench_database(folder, "bench_feed") as conninfo, registry_child(folder, conninfo, master) as registry:
                ready = registry.ready
                env = _service_env(
                    DATABASE_URL=conninfo,
                    DATASERVER_DATA_DIR=str(folder),
                    REGISTRY_ADDR=ready["address"],
                    GATEWAY_ADDR="127.0.0.1:1",
                    FEED_CONNECTIONS=str(CAPACITY_CONNECTIONS),
                    FEED_INSTRUMENTS_PER_CONNECTION=str(PER_CONNECTION),
                    USER_MAX_ITEMS="100000",
                    USER_MAX_INSTRUMENTS=str(CAPACITY_CONNECTIONS * PER_CONNECTION),
                )
                service = children.spawn("subscription", ["-m", "services.subscription"], env, service_started)
                try:
                    keys, loads = asyncio.run(_fill(report, ready["address"], service.address))
                    report.note(
                        f"stack ready in {time.perf_counter() - began:.1f} s (Postgres, registry with "
                        f"{ready['rows']} rows, subscription pid {service.pid}, the fill)"
                    )
                    stack = Stack(conninfo, ready["address"], service, keys, loads)
                    from services.common.instruments import PROTO_TO_SEGMENT

                    option_ids = {sid for _, sid in keys}
                    sim_master = _sim_master(folder, master.csv_path, master.prices_path, option_ids, "sim-master")
                    assert all(PROTO_TO_SEGMENT.get(seg) for seg, _ in keys)
                    sim_port = _free_port()
                    shard0 = _part_shard(report, children, stack, sim_master, sim_port)
                    if 3 in PARTS:
                        _part_e2e(report, children, folder, stack, sim_master, sim_port, shard0)
                finally:
                    for child in reversed(children.all):  # every service, before its database goes
                        child.stop()
                        errors = child.errors()
                        if errors:
                            report.note(f"{child.name}: {len(errors)} ERROR/Traceback lines; first: {errors[0][:1000]}")
        finally:
            children.stop_all()
            if PROFILE:
                _report_profiles(children)


if __name__ == "__main__":
    run(Report())
