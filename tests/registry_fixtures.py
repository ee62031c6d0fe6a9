"""A real registry server on port 0 over its own database, with a small generated master."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import grpc
from psycopg_pool import AsyncConnectionPool

from services.common.auth import create_api_key
from services.common.config import Settings
from services.common.db import open_pool
from services.registry.loader import MasterHolder
from services.registry.server import create_server
from services.registry.servicer import MasterConfig
from services.registry.sources import from_generator

TRADING_DATE = date(2026, 11, 20)  # a Friday
# Tuesday 2026-11-24 is an exchange holiday (Guru Nanak Jayanti): the weekly moves to Monday.
NIFTY_WEEKLY = "2026-11-23"


@dataclass
class RegistryUnderTest:
    channel: grpc.aio.Channel
    pool: AsyncConnectionPool
    holder: MasterHolder
    config: MasterConfig
    admin: tuple[tuple[str, str], ...]
    user: tuple[tuple[str, str], ...]
    address: str


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@asynccontextmanager
async def running_registry(
    conninfo: str, masters_dir: Path, trading_date: date = TRADING_DATE
) -> AsyncIterator[RegistryUnderTest]:
    settings = dataclasses.replace(Settings(), auth_mode="api_key", data_dir=masters_dir.parent, master_scale="small")
    pool = await open_pool(conninfo, max_size=4)
    registry = create_server(settings, pool)
    app, holder, config = registry.app, registry.holder, registry.config
    config.cache_dir = masters_dir
    await app.start()
    await holder.load(from_generator(masters_dir, trading_date, 7, "small"), trading_date)
    await app.set_serving(True)
    admin = await create_api_key(pool, "ops", "admin")
    user = await create_api_key(pool, "alice", "user")
    channel = grpc.aio.insecure_channel(app.address)
    try:
        yield RegistryUnderTest(channel, pool, holder, config, bearer(admin), bearer(user), app.address)
    finally:
        await channel.close()
        await app.stop(0)
        await pool.close()
