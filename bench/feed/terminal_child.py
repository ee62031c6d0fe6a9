"""A terminal process of the end-to-end part (a multiprocessing spawn target, uvloop as the
services run): it holds StreamTicks streams over grpc.aio to every target it is given (the
gateway, and the reference fan-out: the same streams to each), driven by commands on its
pipe: ("window", {"name", "target"}) starts a measurement window of one target's streams,
("end", None) ends it and answers its figures, ("stall", None) opens the stalled stream on
the first target (it reads its snapshot and then nothing), ("resume", None) makes it read
again and answers what it got, ("stop", None) ends the process.

Latency of a tick = its receipt here - the send time the simulator stamped in its volume
field (UTC ms of the day), counted only for a tick whose stamp changed (a new Full packet);
sequence gaps are counted per instrument and per target (each numbers its own ticks).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import uvloop

from bench.children import parent_commands, run_spawned

MS_PER_DAY = 86_400_000
GRPC_OPTIONS = [("grpc.max_receive_message_length", 32 * 1024 * 1024)]


class Tally:
    """What every stream of this process received during one window."""

    def __init__(self) -> None:
        self.ticks = 0
        self.stamped = 0  # ticks whose send stamp changed (a new Full packet): latency counted
        self.gaps = 0  # missing sequence numbers, summed over instruments
        self.gap_events = 0
        self.batches = 0
        self.events: Counter[str] = Counter()
        self.latency: Counter[int] = Counter()  # 0.1 ms buckets: send stamp -> receipt here
        self.shard_part: Counter[int] = Counter()  # shard receipt (receive_time_micros) -> here, sampled
        self.sim_part: Counter[int] = Counter()  # send stamp -> shard receipt, sampled
        self.gateway_part: Counter[int] = Counter()  # shard receipt -> the batch's sent_at, sampled
        self.transit: Counter[int] = Counter()  # a batch's sent_at -> receipt here, per batch

    def summary(self) -> dict[str, Any]:
        return {
            "ticks": self.ticks,
            "stamped": self.stamped,
            "gaps": self.gaps,
            "gap_events": self.gap_events,
            "batches": self.batches,
            "events": dict(self.events),
            "latency": dict(self.latency),
            "shard_part": dict(self.shard_part),
            "sim_part": dict(self.sim_part),
            "gateway_part": dict(self.gateway_part),
            "transit": dict(self.transit),
        }


def request(keys: Sequence[Sequence[int]]) -> Any:
    from dataserver.common.v1 import common_pb2
    from dataserver.feed.v1 import feed_pb2

    protos = [
        common_pb2.InstrumentKey(exchange_segment=common_pb2.ExchangeSegment.Name(s), security_id=i) for s, i in keys
    ]
    return feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=protos), mode=common_pb2.FEED_MODE_FULL)


class Receiver:
    """Every stream of this process: what they received, per target."""

    def __init__(self, targets: int) -> None:
        self.tally = Tally()  # the measured target's, this window
        self.measured = 0
        self.other = Tally()  # what the other targets send meanwhile (heartbeats), not counted
        # Per target and instrument, over the whole life of the process: last sequence and stamp.
        self.last: list[dict[tuple[int, int], list[int]]] = [{} for _ in range(targets)]
        self.streams_open = [0] * targets
        self.errors: Counter[str] = Counter()

    def tally_of(self, target: int) -> Tally:
        return self.tally if target == self.measured else self.other

    def on_ticks(self, target: int, ticks: Any, snapshot: bool, sent_ms: float = 0.0) -> None:
        t = self.tally_of(target)
        last = self.last[target]
        now_ms = time.time() * 1000.0
        today = now_ms % MS_PER_DAY
        if sent_ms:
            t.transit[int((now_ms - sent_ms) * 10)] += 1
        for tick in ticks:
            key = tick.key
            k = (key.exchange_segment, key.security_id)
            seq = tick.sequence
            volume = tick.volume
            state = last.get(k)
            if state is None:
                last[k] = [seq, volume]
                continue
            previous, stamp = state
            if seq <= previous:
                continue  # a snapshot repeating a value already seen
            if not snapshot:
                t.ticks += 1
                if seq != previous + 1:
                    t.gaps += seq - previous - 1
                    t.gap_events += 1
                if volume != stamp:
                    t.stamped += 1
                    t.latency[int(((today - volume) % MS_PER_DAY) * 10)] += 1
                    if t.stamped & 15 == 0:  # the split, sampled
                        shard_ms = (tick.receive_time_micros / 1000.0) % MS_PER_DAY
                        t.shard_part[int(((today - shard_ms) % MS_PER_DAY) * 10)] += 1
                        t.sim_part[int(((shard_ms - volume) % MS_PER_DAY) * 10)] += 1
                        if sent_ms:
                            t.gateway_part[int(((sent_ms % MS_PER_DAY - shard_ms) % MS_PER_DAY) * 10)] += 1
            state[0] = seq
            state[1] = volume

    async def stream(self, stub: Any, keys: Sequence[Sequence[int]], target: int) -> None:
        import grpc

        call = stub.StreamTicks(request(keys))
        self.streams_open[target] += 1
        try:
            async for response in call:
                body = response.WhichOneof("body")
                if body == "batch":
                    self.tally_of(target).batches += 1
                    batch = response.batch
                    sent = batch.sent_at
                    self.on_ticks(target, batch.ticks, False, sent.seconds * 1000.0 + sent.nanos / 1e6)
                elif body == "snapshot":
                    self.on_ticks(target, response.snapshot.ticks, True)
                else:
                    event = body if body != "event" else response.event.WhichOneof("event")
                    self.tally_of(target).events[event] += 1
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.errors[error.code().name] += 1
        finally:
            self.streams_open[target] -= 1

    def window_summary(self, seconds: float, cpu: float) -> dict[str, Any]:
        summary = self.tally.summary()
        summary.update(
            seconds=seconds,
            cpu=cpu,
            streams_open=self.streams_open[self.measured],
            errors=dict(self.errors),
            instruments=sum(len(last) for last in self.last),
        )
        return summary


class Stalled:
    """The stalled stream: its own channel, opened by "stall", reads its snapshot, then
    nothing until "resume"."""

    def __init__(self, address: str, keys: Sequence[Sequence[int]]) -> None:
        self.address = address
        self.keys = keys
        self.channel: Any = None
        self.call: Any = None

    async def open(self) -> dict[str, Any]:
        import grpc
        from dataserver.feed.v1 import feed_pb2_grpc

        # A small fixed HTTP/2 window (no BDP growth), so the gateway is blocked by this
        # reader within ~16 KB instead of buffering megabytes into the client.
        options = [*GRPC_OPTIONS, ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)]
        self.channel = grpc.aio.insecure_channel(self.address, options=options)
        self.call = feed_pb2_grpc.GatewayServiceStub(self.channel).StreamTicks(request(self.keys))
        first = await asyncio.wait_for(self.call.read(), 20)
        return {"snapshot_ticks": len(first.snapshot.ticks) if first.WhichOneof("body") == "snapshot" else -1}

    async def drain(self) -> dict[str, Any]:
        """Reads what the stream has, for a short while: the batches the gateway held for it
        and the slow-consumer warnings (with their pending_instruments) it queued."""
        import grpc

        if self.call is None:
            return {}
        out: dict[str, Any] = {"batches": 0, "ticks": 0, "first_batch_ticks": None, "warnings": [], "error": ""}
        started = time.perf_counter()
        try:
            while time.perf_counter() - started < 3.0:
                try:
                    response = await asyncio.wait_for(self.call.read(), 1.0)
                except TimeoutError:
                    break
                if response is grpc.aio.EOF:
                    break
                body = response.WhichOneof("body")
                if body == "batch":
                    out["batches"] += 1
                    out["ticks"] += len(response.batch.ticks)
                    if out["first_batch_ticks"] is None:
                        out["first_batch_ticks"] = len(response.batch.ticks)
                elif body == "event" and response.event.WhichOneof("event") == "slow_consumer":
                    w = response.event.slow_consumer
                    lag = w.lag.seconds + w.lag.nanos / 1e9
                    out["warnings"].append(
                        {"lag_s": lag, "conflated": w.conflated_updates, "pending": w.pending_instruments}
                    )
        except grpc.aio.AioRpcError as error:
            out["error"] = f"{error.code().name}: {error.details()}"
        return out

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.channel is not None:
            await self.channel.close(grace=None)


async def _commands(conn: Any, receiver: Receiver, stalled: Stalled, lifetime: float) -> None:
    """Answers the parent's commands until "stop", or `lifetime` seconds without one."""
    window_started, cpu_started = time.perf_counter(), time.process_time()
    async for command, arg in parent_commands(conn, lifetime):
        if command == "window":
            receiver.tally, receiver.other, receiver.measured = Tally(), Tally(), arg["target"]
            window_started, cpu_started = time.perf_counter(), time.process_time()
            conn.send({"event": "window", "name": arg["name"]})
        elif command == "end":
            summary = receiver.window_summary(time.perf_counter() - window_started, time.process_time() - cpu_started)
            conn.send({"event": "end", "summary": summary})
        elif command == "stall":
            conn.send({"event": "stalled", "summary": await stalled.open()})
        elif command == "resume":
            conn.send({"event": "resumed", "summary": await stalled.drain()})


async def _terminals(conn: Any, spec: dict[str, Any]) -> None:
    import grpc
    from dataserver.feed.v1 import feed_pb2_grpc

    targets: list[str] = spec["addresses"]
    receiver = Receiver(len(targets))
    stalled = Stalled(targets[0], spec["stalled"])
    channels: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for target, address in enumerate(targets):
            mine = [grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) for _ in range(spec["channels"])]
            channels.extend(mine)
            for channel in mine:
                await asyncio.wait_for(channel.channel_ready(), 10)
            stubs = [feed_pb2_grpc.GatewayServiceStub(channel) for channel in mine]
            tasks.extend(
                asyncio.create_task(receiver.stream(stubs[n % len(stubs)], keys, target))
                for n, keys in enumerate(spec["streams"])
            )
        conn.send({"event": "ready", "pid": os.getpid(), "streams": len(tasks)})
        await _commands(conn, receiver, stalled, spec["lifetime"])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stalled.close()
        for channel in channels:
            await channel.close(grace=None)


def terminal_child(conn: Any, log_path: str, spec: dict[str, Any]) -> None:
    """multiprocessing (spawn) target: logs to a file, reports errors on the pipe."""
    run_spawned(conn, log_path, lambda: uvloop.run(_terminals(conn, spec)))
