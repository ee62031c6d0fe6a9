"""Terminal benchmark (`python -m bench terminal`): the terminal app (terminal/) headless, in
textual's run_test pilot at 160x50, against `make run`'s own stack (`python -m services.stack`
in a temporary data folder on free ports: its simulator at its default pacing, the dev user's
watchlist seeded with NIFTY's chain), with NIFTY's option chain open, as `make terminal` is.

1. Start-up: the app created (`build(parse(...))`) -> the first frame whose watchlist shows an
   LTP (target 2 s); the imports are measured apart, in a fresh interpreter.
2. Responsiveness: a key press (cursor down/up in the chain) -> the first frame showing the
   moved cursor, p50 and p99, live against the same app fed no ticks (a frozen copy of the live
   model and chain) in the same run, in alternating rounds; the event loop's lag under the
   stream (a 10 ms sleep's overshoot); the ticks the model applied against what the gateway
   sent (its feed_gateway_ticks_sent_total: the app's is the only stream open).
3. The process's CPU while following the stream, and with no stream.

A frame is what textual's compositor renders for the screen (headless it is computed, not
written): the app's `_display`, the one place every frame passes, is wrapped to see them.
Knobs: BENCH_TERMINAL_ROUNDS (live/idle pairs, default 3), BENCH_TERMINAL_PRESSES (per
session, default 50), BENCH_TERMINAL_WINDOW (seconds followed per session, default 6).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.children import REPO_ROOT, Child, cpu_seconds
from bench.feed.procs import Children, metrics, service_env
from bench.report import Report, percentile

ROUNDS = int(os.environ.get("BENCH_TERMINAL_ROUNDS", "3"))
PRESSES = int(os.environ.get("BENCH_TERMINAL_PRESSES", "50"))
WINDOW_SECONDS = float(os.environ.get("BENCH_TERMINAL_WINDOW", "6"))
SIZE = (160, 50)
STARTUP_TARGET = 2.0
# The stream's cost to the keys (live p99 over idle p99): at make run's rate the stream adds a
# few small messages a second to a screen already redrawn on a timer, so a key should wait
# behind at most one more frame's work; a redraw per message, or a model falling behind,
# shows as several times.
RATIO_TARGET = 2.0
# A key's effect within 0.1 s feels instantaneous (the classic limit of perceived response).
KEY_P99_TARGET_MS = 100.0
KEEP_UP_TARGET = 0.95
LAG_SLEEP = 0.01
FRAME_SECONDS = 10.0  # the longest wait for a frame showing something
STACK_START_SECONDS = 240.0
STACK_STOP_SECONDS = 60.0
STREAMING_SECONDS = 60.0
CHAIN = "NIFTY"


@dataclass
class Session:
    """What one app session measured."""

    presses: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    cpu_share: float = 0.0
    startup: float | None = None
    applied: int = 0
    sent: float = 0.0
    shown_rate: float = 0.0
    closing_error: str = ""


class Frames:
    """The frames an app renders; `shown` waits for the first one at which a condition holds."""

    def __init__(self, app: Any) -> None:
        self._waiting: list[tuple[Callable[[], bool], asyncio.Future[float]]] = []
        display = app._display

        def on_frame(screen: Any, renderable: Any) -> None:
            display(screen, renderable)
            if renderable is None:
                return
            now = time.perf_counter()
            for shows, future in self._waiting:
                if not future.done() and shows():
                    future.set_result(now)
            self._waiting = [(s, f) for s, f in self._waiting if not f.done()]

        setattr(app, "_display", on_frame)  # noqa: B010 (an instance attribute over textual's method)

    def shown(self, shows: Callable[[], bool]) -> asyncio.Future[float]:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((shows, future))
        return future


async def _when_shown(frames: Frames, shows: Callable[[], bool], what: str) -> float:
    try:
        return await asyncio.wait_for(frames.shown(shows), FRAME_SECONDS)
    except TimeoutError:
        raise TimeoutError(f"no frame showed {what} within {FRAME_SECONDS:g} s") from None


async def _press_latencies(app: Any, frames: Frames, presses: int, seed: int) -> list[float]:
    """Cursor down/up in the chain table, at random gaps (every phase of the render timer and
    the stream); each: the key posted -> the first frame with the cursor on its new row."""
    from textual import events
    from textual.widgets import DataTable

    table = app.query_one("#chain", DataTable)

    def cursor_on(row: int) -> Callable[[], bool]:
        return lambda: table.cursor_row == row

    gaps = random.Random(seed)
    latencies = []
    for n in range(presses):
        key, row = ("down", table.cursor_row + 1) if n % 2 == 0 else ("up", table.cursor_row - 1)
        await asyncio.sleep(gaps.uniform(0.03, 0.12))
        waiter = frames.shown(cursor_on(row))
        began = time.perf_counter()
        app.post_message(events.Key(key, None))
        latencies.append(await asyncio.wait_for(waiter, FRAME_SECONDS) - began)
    return latencies


async def _follow_window(session: Session, model: Any, gateway_metrics: int | None) -> None:
    """WINDOW_SECONDS of following: the loop's lag, the process's CPU share, ticks applied and sent."""
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            await asyncio.sleep(LAG_SLEEP)
            session.lags.append(time.perf_counter() - began - LAG_SLEEP)

    sent = _ticks_sent(gateway_metrics)
    applied, cpu, began = model.ticks_applied, cpu_seconds(os.getpid()), time.perf_counter()
    sampler = asyncio.create_task(sample())
    await asyncio.sleep(WINDOW_SECONDS)
    stop.set()
    await sampler
    session.cpu_share = (cpu_seconds(os.getpid()) - cpu) / (time.perf_counter() - began)
    session.sent = _ticks_sent(gateway_metrics) - sent
    session.applied = model.ticks_applied - applied
    session.shown_rate = model.updates_per_second()


def _ticks_sent(port: int | None) -> float:
    return metrics(port, ("feed_gateway_ticks_sent_total",)).get("feed_gateway_ticks_sent_total", 0.0) if port else 0.0


def _priced(app: Any) -> Callable[[], bool]:
    from textual.coordinate import Coordinate
    from textual.widgets import DataTable

    table = app.query_one("#watchlist", DataTable)
    return lambda: table.row_count > 0 and str(table.get_cell_at(Coordinate(0, 1))) not in ("—", "")


def _chain_shown(app: Any) -> Callable[[], bool]:
    from textual.widgets import DataTable

    table = app.query_one("#chain", DataTable)
    return lambda: app.showing == "chain" and table.display and table.row_count > 0


async def _open_chain(app: Any, pilot: Any, frames: Frames) -> None:
    """`c`, the underlying, Enter: the chain view, as a trader opens it."""
    shown = frames.shown(_chain_shown(app))
    await pilot.press("c", *CHAIN.lower(), "enter")
    await asyncio.wait_for(shown, FRAME_SECONDS)


async def _session(app: Any, body: Callable[[Any, Frames], Awaitable[Session]]) -> Session:
    """`body(pilot, frames)` in the app's headless run; an error the app raises as it closes,
    once the body has measured, is kept in the session's note rather than losing the figures."""
    measured: list[Session] = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            measured.append(await body(pilot, Frames(app)))
    except Exception as error:
        if not measured:
            raise
        measured[0].closing_error = f"{type(error).__name__}: {error}"
    return measured[0]


async def _live(addresses: dict[str, str], gateway_metrics: int, seed: int) -> tuple[Session, Any, Any]:
    """The app as `make terminal` builds it; returns its session, and its model and chain as they were."""
    from terminal.__main__ import build, parse

    began = time.perf_counter()
    app, connection = build(parse([f"--{name}={address}" for name, address in addresses.items()]))
    chain: list[Any] = []

    async def body(pilot: Any, frames: Frames) -> Session:
        session = Session(startup=await _when_shown(frames, _priced(app), "a priced watchlist row") - began)
        await _open_chain(app, pilot, frames)
        await _follow_window(session, app.model, gateway_metrics)
        session.presses = await _press_latencies(app, frames, PRESSES, seed)
        source = app._chain  # the app's own source: the view its screen shows
        assert source is not None
        chain.append(source.view())
        return session

    try:
        session = await _session(app, body)
    finally:
        await connection.close()
    return session, app.model, chain[0]


@dataclass
class FrozenChain:
    """A chain source that shows one view as it was (the reference: no stream)."""

    shown: Any

    async def open(self, symbol: str) -> None:
        return None

    def view(self) -> Any:
        return self.shown


async def _idle(model: Any, chain: Any, seed: int) -> Session:
    """The same app on a frozen copy of the live model and chain: the same rows, no ticks."""
    from terminal.app import TerminalApp
    from terminal.model import TerminalModel

    frozen = TerminalModel(connection=model.connection, ticks=dict(model.ticks), items=dict(model.items))
    app = TerminalApp(frozen, chain=FrozenChain(chain))

    async def body(pilot: Any, frames: Frames) -> Session:
        session = Session()
        await _when_shown(frames, _priced(app), "the frozen watchlist")
        await _open_chain(app, pilot, frames)
        await _follow_window(session, frozen, None)
        session.presses = await _press_latencies(app, frames, PRESSES, seed)
        return session

    return await _session(app, body)


async def _until_streaming(gateway: str, instruments: int) -> None:
    """Until the dev user's watchlist stream has carried a live tick of each of its instruments:
    the stack's banner comes once the watchlist is seeded, not once every shard ticks it."""
    import grpc
    from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc

    seen: set[tuple[int, int]] = set()
    async with grpc.aio.insecure_channel(gateway) as channel:
        call = feed_pb2_grpc.GatewayServiceStub(channel).StreamTicks(feed_pb2.StreamTicksRequest(my_watchlist=True))
        try:
            async with asyncio.timeout(STREAMING_SECONDS):
                async for response in call:
                    seen.update((t.key.exchange_segment, t.key.security_id) for t in response.batch.ticks)
                    if len(seen) >= instruments:
                        return
        except TimeoutError:
            raise TimeoutError(f"{len(seen)} of {instruments} instruments ticked in {STREAMING_SECONDS:g} s") from None
        finally:
            call.cancel()


async def _rounds(
    addresses: dict[str, str], gateway_metrics: int, instruments: int, report: Report
) -> tuple[list[Session], list[Session]]:
    began = time.perf_counter()
    await _until_streaming(addresses["gateway"], instruments)
    report.note(
        f"every one of the dev watchlist's {instruments} instruments ticking {time.perf_counter() - began:.1f} s later"
    )
    live, idle = [], []
    for n in range(ROUNDS):
        session, model, chain = await _live(addresses, gateway_metrics, seed=n)
        live.append(session)
        idle.append(await _idle(model, chain, seed=n))
    return live, idle


def _import_seconds() -> float:
    """The terminal's imports in a fresh interpreter (best of three, less a bare interpreter)."""

    def best(code: str) -> float:
        times = []
        for _ in range(3):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
            times.append(time.perf_counter() - began)
        return min(times)

    return best("import terminal.__main__") - best("pass")


def _seeded(record: dict[str, Any]) -> bool:
    """The stack's line once the dev user's watchlist is seeded (its banner follows)."""
    return record.get("msg") == "seeded"


def _start_stack(children: Children, folder: Path) -> tuple[Child, dict[str, str], int]:
    """`make run` (python -m services.stack) in `folder`; ready once it has seeded the dev watchlist."""
    from services.common.config import load_settings
    from services.stack.__main__ import free_offset, plan

    offset = free_offset(3100, step=300)
    env = service_env(DATASERVER_DATA_DIR=str(folder), STACK_PORT_OFFSET=str(offset))
    env.pop("DATABASE_URL", None)
    stack = children.spawn("stack", ["-m", "services.stack"], env, _seeded, timeout=STACK_START_SECONDS)
    processes = {p.name: p for p in plan(load_settings({"STACK_PORT_OFFSET": str(offset)}))}
    addresses = {name: f"127.0.0.1:{processes[name].grpc_port}" for name in ("gateway", "subscription", "registry")}
    return stack, addresses, processes["gateway"].metrics_port


def _p(values: list[float], p: float) -> float:
    return percentile(sorted(values), p)


def _report_keys(report: Report, live: list[Session], idle: list[Session]) -> None:
    pressed = {
        name: [x * 1000 for s in sessions for x in s.presses] for name, sessions in (("live", live), ("idle", idle))
    }
    for name, values in pressed.items():
        report.note(
            f"key -> frame, {name}: p50 {_p(values, 50):.1f} ms, p99 {_p(values, 99):.1f} ms, "
            f"max {max(values):.1f} ms over {len(values)} presses"
        )
    report.add("terminal key -> frame p99, live", _p(pressed["live"], 99), "ms", target=KEY_P99_TARGET_MS)
    # Per round (a live session and then its idle one, seconds apart), so that load from
    # elsewhere on the machine weighs on both sides of a ratio; the median over rounds.
    ratios = [
        (_p(a.presses, 50) / _p(b.presses, 50), _p(a.presses, 99) / _p(b.presses, 99))
        for a, b in zip(live, idle, strict=True)
    ]
    report.add("terminal key -> frame p50, live / idle", statistics.median(r[0] for r in ratios), "x")
    report.add(
        "terminal key -> frame p99, live / idle", statistics.median(r[1] for r in ratios), "x", target=RATIO_TARGET
    )
    report.note(
        "per round, p99 live/idle in ms: "
        + ", ".join(
            f"{1000 * _p(a.presses, 99):.0f}/{1000 * _p(b.presses, 99):.0f}" for a, b in zip(live, idle, strict=True)
        )
    )


def _report(report: Report, live: list[Session], idle: list[Session]) -> None:
    startups = [s.startup for s in live if s.startup is not None]
    report.add("terminal start-up (app created -> first LTP on screen)", startups[0], "s", target=STARTUP_TARGET)
    report.note(f"every round's start-up: {', '.join(f'{s:.2f}' for s in startups)} s (the first is cold)")
    _report_keys(report, live, idle)
    lags = {name: [x * 1000 for s in sessions for x in s.lags] for name, sessions in (("live", live), ("idle", idle))}
    report.add("terminal event loop lag p99, live", _p(lags["live"], 99), "ms")
    report.note(
        f"event loop lag p99 with no stream: {_p(lags['idle'], 99):.1f} ms; max live {max(lags['live']):.1f} ms"
    )
    applied, sent = sum(s.applied for s in live), sum(s.sent for s in live)
    seconds = WINDOW_SECONDS * len(live)
    report.add("terminal ticks applied / gateway sent", applied / sent if sent else float("nan"), "x",
               target=KEEP_UP_TARGET, op=">=")  # fmt: skip
    report.note(
        f"the gateway sent {sent / seconds:.1f} ticks/s to the app, which applied {applied / seconds:.1f}/s "
        f"(its status line said {statistics.mean(s.shown_rate for s in live):.0f} updates/s)"
    )
    report.add("terminal CPU following the stream", 100 * statistics.mean(s.cpu_share for s in live), "% of a core")
    report.add("terminal CPU with no stream", 100 * statistics.mean(s.cpu_share for s in idle), "% of a core")
    for name, sessions in (("live", live), ("idle", idle)):
        for n, s in enumerate(sessions):
            if s.closing_error:
                report.note(f"!! the {name} app of round {n + 1} raised as it closed: {s.closing_error}")


def run(report: Report) -> None:
    report.add("terminal imports (fresh interpreter)", _import_seconds(), "s")
    with tempfile.TemporaryDirectory(prefix="bench-terminal-") as tmp:
        folder = Path(tmp)
        children = Children(folder)
        try:
            began = time.perf_counter()
            stack, addresses, gateway_metrics = _start_stack(children, folder)
            report.note(f"make run's stack up and seeded in {time.perf_counter() - began:.1f} s (pid {stack.pid})")
            instruments = int(stack.info.get("watchlist_instruments", 1))
            live, idle = asyncio.run(_rounds(addresses, gateway_metrics, instruments, report))
            report.note(f"load average after the rounds (2 cores shared): {os.getloadavg()[0]:.1f}")
            _report(report, live, idle)
        finally:
            for child in children.all:
                child.stop(STACK_STOP_SECONDS)
                errors = child.errors()
                if errors:
                    report.note(f"{child.name}: {len(errors)} ERROR/Traceback lines; first: {errors[0][:600]}")
            children.stop_all()
