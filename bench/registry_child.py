"""The registry as a bench child: a real registry server in a spawned process (`create_server`
+ `app.start()`, dev auth, logging configured as `serve()` does it, to a log file) with a
master loaded, its load timed per step and its RSS reported on its pipe; it serves until
told to stop or until its lifetime ends. Used by bench.registry and bench.feed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.children import run_spawned, status_kib, stop_spawned
from services.registry.sources import MasterFile

TRADING_DATE = date(2026, 11, 20)  # a Friday; fixed so every run loads the same master
SEED = 7  # of the generated master
CHILD_READY_SECONDS = 240.0  # start + full load
CHILD_LIFETIME_SECONDS = 600.0  # the child stops by itself after this, whatever the parent does
CHILD_STOP_SECONDS = 15.0


class _PhaseTimer:
    """Wraps the loader's steps to time them; behaviour is unchanged (bench process only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap_sync(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        return timed

    def wrap_async(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        return timed


async def _serve(conn: Connection, conninfo: str, csv_path: str, prices_path: str, detail: str, data_dir: str) -> None:
    from services.common.config import Settings
    from services.common.db import open_pool
    from services.common.last_prices import NoLastPrices
    from services.registry import loader
    from services.registry.server import create_server
    from services.registry.sources import MasterFile
    from services.registry.store import RegistryStore

    phases = _PhaseTimer()
    timed = (
        (loader, "_parse", phases.wrap_sync("parse", loader._parse)),
        (loader, "Catalog", phases.wrap_sync("catalog", loader.Catalog)),
        (RegistryStore, "save_master", phases.wrap_async("save_master (COPY)", RegistryStore.save_master)),
    )
    for owner, name, wrapped in timed:  # this process only: the loader's steps, timed
        setattr(owner, name, wrapped)

    settings = dataclasses.replace(
        Settings(), auth_mode="dev", data_dir=Path(data_dir), grpc_host="127.0.0.1", grpc_port=0, master_scale="full"
    )
    pool = await open_pool(conninfo, max_size=settings.db_pool_max_size, name="registry")
    registry = create_server(settings, pool, prices=NoLastPrices())  # no gateway in this bench
    registry.app.on_stop.append(pool.close)
    await registry.app.start()
    rss_started = status_kib()

    master_file = MasterFile("generated", detail, Path(csv_path), Path(prices_path))
    started = time.perf_counter()
    outcome = await registry.holder.load(master_file, TRADING_DATE)
    load_seconds = time.perf_counter() - started
    rss_loaded = status_kib()
    await registry.app.set_serving(True)

    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)  # the parent's "stop", or EOF if it died
    conn.send(
        {
            "event": "ready",
            "address": registry.app.address,
            "pid": os.getpid(),
            "load_seconds": load_seconds,
            "phases": phases.seconds,
            "rows": outcome.master.version.row_count,
            "rejected": outcome.master.version.rejected_count,
            "rss_started_kib": rss_started["VmRSS"],
            "rss_loaded_kib": rss_loaded["VmRSS"],
            "hwm_loaded_kib": rss_loaded["VmHWM"],
        }
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(readable.wait(), timeout=CHILD_LIFETIME_SECONDS)
    loop.remove_reader(conn.fileno())
    final = status_kib()
    with contextlib.suppress(OSError):
        conn.send({"event": "stopping", "rss_end_kib": final["VmRSS"], "hwm_end_kib": final["VmHWM"]})
    await registry.app.stop(1.0)


def _server_child(conn: Connection, log_path: str, *args: str) -> None:
    """Entry point of the registry process: logs as `serve()` configures them, to a file."""

    def serve() -> None:
        from services.common.jsonlog import configure_logging

        configure_logging("registry", "INFO")
        asyncio.run(_serve(conn, *args))

    run_spawned(conn, log_path, serve, stdout=False)


def _stop_child(process: multiprocessing.process.BaseProcess, conn: Connection) -> dict[str, Any]:
    final: dict[str, Any] = {}
    if process.is_alive():
        try:
            conn.send("stop")
            if conn.poll(CHILD_STOP_SECONDS):
                final = conn.recv()
        except (OSError, EOFError):
            pass
    stop_spawned(process, CHILD_STOP_SECONDS)
    return final


def _wait_ready(process: multiprocessing.process.BaseProcess, conn: Connection, log_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + CHILD_READY_SECONDS
    while time.monotonic() < deadline:
        if conn.poll(0.5):
            message = conn.recv()
            if message.get("event") == "ready":
                return message
            raise RuntimeError(f"registry process failed:\n{message.get('traceback', message)}")
        if not process.is_alive():
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise RuntimeError(
                f"registry process exited with {process.exitcode} before it was ready; log tail:\n{tail}"
            )
    raise TimeoutError(f"registry process not ready after {CHILD_READY_SECONDS:.0f} s")


@dataclass
class RegistryChild:
    """A registry server in a child process: its ready report, and its last one on stopping."""

    ready: dict[str, Any] = dataclasses.field(default_factory=dict)
    final: dict[str, Any] = dataclasses.field(default_factory=dict)


@contextmanager
def registry_child(folder: Path, conninfo: str, master: MasterFile) -> Iterator[RegistryChild]:
    """Runs a real registry in a spawned child with `master` loaded, logging to a file."""
    log_path = folder / "registry.log"
    context = multiprocessing.get_context("spawn")
    parent_conn, child_conn = context.Pipe()
    args = (str(log_path), conninfo, str(master.csv_path), str(master.prices_path), master.detail, str(folder))
    process = context.Process(target=_server_child, args=(child_conn, *args), name="bench-registry", daemon=True)
    process.start()
    child_conn.close()
    child = RegistryChild()
    try:
        child.ready = _wait_ready(process, parent_conn, log_path)
        yield child
    finally:
        child.final = _stop_child(process, parent_conn)
        parent_conn.close()
