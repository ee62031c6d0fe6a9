"""Loads a master into Postgres and the in-memory catalog, atomically.

Parsing, the COPY and the catalog build all finish before the new catalog replaces the old
one; any failure on the way leaves the previous master serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import date

from services.dhan.master import (
    ParseResult,
    RejectedRow,
    parse_master,
    parse_prices,
)
from services.registry.catalog import Catalog
from services.registry.sources import MasterFile
from services.registry.store import MasterVersion, RegistryStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedMaster:
    version: MasterVersion
    catalog: Catalog


@dataclass(frozen=True)
class LoadOutcome:
    master: LoadedMaster
    rejected: list[RejectedRow]


def _parse(master_file: MasterFile) -> ParseResult:
    prices = None
    if master_file.prices_path is not None:
        with master_file.prices_path.open(newline="") as handle:
            prices = parse_prices(handle)
    with master_file.csv_path.open(newline="", encoding="utf-8-sig") as handle:
        return parse_master(handle, prices)


class MasterHolder:
    """Holds the serving master; reloads are serialised and swap it in one assignment."""

    def __init__(self, store: RegistryStore) -> None:
        self._store = store
        self._lock = asyncio.Lock()
        self.current: LoadedMaster | None = None

    async def load(self, master_file: MasterFile, trading_date: date) -> LoadOutcome:
        async with self._lock:
            started = time.perf_counter()
            parsed = await asyncio.to_thread(_parse, master_file)
            if not parsed.records:
                raise ValueError(f"{master_file.detail}: no valid rows ({len(parsed.rejected)} rejected)")
            catalog = await asyncio.to_thread(Catalog, parsed.records, trading_date)
            version = await self._store.save_master(
                parsed.records,
                source=master_file.source,
                source_detail=master_file.detail,
                trading_date=trading_date,
                rejected_count=len(parsed.rejected),
                load_seconds=time.perf_counter() - started,
            )
            self.current = LoadedMaster(version, catalog)
            log.info(
                "master loaded",
                extra={
                    "version": version.version,
                    "rows": version.row_count,
                    "rejected": version.rejected_count,
                    "seconds": round(time.perf_counter() - started, 3),
                    "source": master_file.detail,
                },
            )
            return LoadOutcome(self.current, parsed.rejected)

    async def restore(self, trading_date: date) -> bool:
        """Serves the active master from Postgres if it is for `trading_date`."""
        async with self._lock:
            active = await self._store.active_master()
            if active is None or active.trading_date != trading_date:
                return False
            records = await self._store.load_instruments(active.version)
            catalog = await asyncio.to_thread(Catalog, records, trading_date)
            self.current = LoadedMaster(active, catalog)
            log.info("master restored from database", extra={"version": active.version, "rows": len(records)})
            return True
