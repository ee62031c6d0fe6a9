"""The registry's Postgres side: bulk-loading masters with COPY, switching the active
version atomically, reading it back at start-up, and the persistent ATM cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime

from psycopg.types.json import Jsonb

from services.common.db import Pool
from services.common.sqlfiles import load_queries
from services.dhan.master import InstrumentRecord
from services.registry.chain import ChainWindow

QUERIES = load_queries("services.registry")
# copy_active_instruments' column types, in InstrumentRecord's field order.
_INSTRUMENT_COLUMN_TYPES = [
    "text", "int8", "text", "text", "text", "text", "text", "float8", "float8", "date", "text", "float8", "text",
    "text", "float8",
]  # fmt: skip


@dataclass(frozen=True)
class MasterVersion:
    version: int
    source: str
    source_detail: str
    trading_date: date
    row_count: int
    rejected_count: int
    load_seconds: float
    loaded_at: datetime


class RegistryStore:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def save_master(
        self,
        records: list[InstrumentRecord],
        *,
        source: str,
        source_detail: str,
        trading_date: date,
        rejected_count: int,
        load_seconds: float,
    ) -> MasterVersion:
        """Writes a new version and makes it the active one in a single transaction."""
        async with self._pool.connection() as conn:
            async with conn.transaction():
                cursor = await conn.execute(
                    QUERIES["insert_master_version"],
                    {
                        "source": source,
                        "source_detail": source_detail,
                        "trading_date": trading_date,
                        "row_count": len(records),
                        "rejected_count": rejected_count,
                        "load_seconds": load_seconds,
                    },
                )
                row = await cursor.fetchone()
                assert row is not None
                version = int(row["version"])
                async with conn.cursor().copy(QUERIES["copy_instruments"]) as copy:
                    for r in records:
                        await copy.write_row(
                            (
                                version,
                                r.segment,
                                r.security_id,
                                r.exchange,
                                r.instrument_type,
                                r.trading_symbol,
                                r.display_name,
                                r.underlying_symbol,
                                r.lot_size,
                                r.tick_size,
                                r.expiry,
                                r.expiry_flag or None,
                                r.strike,
                                r.option_type or None,
                                r.series,
                                r.previous_close,
                            )
                        )
                await conn.execute(QUERIES["deactivate_masters"])
                await conn.execute(QUERIES["activate_master"], {"version": version})
            # Old versions go after the switch, outside the transaction readers wait on.
            await conn.execute(QUERIES["delete_inactive_masters"], {"keep": version})
        active = await self.active_master()
        assert active is not None and active.version == version
        return active

    async def active_master(self) -> MasterVersion | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(QUERIES["active_master"])
            row = await cursor.fetchone()
        return MasterVersion(**row) if row else None

    async def load_instruments(self, version: int) -> list[InstrumentRecord]:
        async with self._pool.connection() as conn:
            cursor = conn.cursor()
            async with cursor.copy(QUERIES["copy_active_instruments"], {"version": version}) as copy:
                copy.set_types(_INSTRUMENT_COLUMN_TYPES)
                return [InstrumentRecord(*row) async for row in copy.rows()]

    async def save_chain_window(
        self, version: int, symbol: str, expiry: date, each_side: int, price: float, window: ChainWindow
    ) -> None:
        strikes = [
            [strike, call.security_id if call else None, put.security_id if put else None]
            for strike, call, put in window.strikes
        ]
        async with self._pool.connection() as conn:
            await conn.execute(
                QUERIES["insert_atm_cache"],
                {
                    "master_version": version,
                    "underlying_symbol": symbol,
                    "expiry_date": expiry,
                    "atm_strike": window.atm_strike,
                    "strikes_each_side": each_side,
                    "strike_step": window.strike_step,
                    "underlying_price": price,
                    "window_strikes": Jsonb(strikes, dumps=json.dumps),
                },
            )
