"""A real registry server on port 0 over its own database, with a small generated master."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

import grpc
import pytest

from services.common.auth import create_api_key
from services.common.clock import ManualClock
from services.common.config import Settings
from services.common.db import Pool, open_pool
from services.common.last_prices import NoLastPrices
from services.common.market_calendar import IST
from services.registry.loader import MasterHolder
from services.registry.server import create_server
from services.registry.servicer import MasterConfig

TRADING_DATE = date(2026, 11, 20)  # a Friday
# Tuesday 2026-11-24 is an exchange holiday (Guru Nanak Jayanti): the weekly moves to Monday.
NIFTY_WEEKLY = "2026-11-23"


@dataclass
class RegistryUnderTest:
    channel: grpc.aio.Channel
    pool: Pool
    holder: MasterHolder
    config: MasterConfig
    admin: tuple[tuple[str, str], ...]
    user: tuple[tuple[str, str], ...]
    address: str


async def expect_status(call, code: grpc.StatusCode) -> str:
    """Awaits a call that must fail with `code`; returns the error's details."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value.details() or ""


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@asynccontextmanager
async def running_registry(
    conninfo: str, masters_dir: Path, trading_date: date = TRADING_DATE, scale: str = "small"
) -> AsyncIterator[RegistryUnderTest]:
    """`scale` "full" loads the full generated master (capacity tests at Dhan's real limits)."""
    settings = dataclasses.replace(
        Settings(),
        auth_mode="api_key",
        data_dir=masters_dir.parent,
        master_source="generated",
        master_seed=7,
        master_scale=scale,
        shutdown_grace_seconds=0,
    )
    pool = await open_pool(conninfo, max_size=4)
    # The clock's trading date is the generated master's, at start-up and for a dateless reload.
    clock = ManualClock(datetime.combine(trading_date, time(10, 0), IST))
    registry = create_server(settings, pool, prices=NoLastPrices(), clock=clock)
    registry.config.cache_dir = masters_dir
    try:
        async with registry.app, grpc.aio.insecure_channel(registry.app.address) as channel:
            admin = await create_api_key(pool, "ops", "admin")
            user = await create_api_key(pool, "alice", "user")
            yield RegistryUnderTest(
                channel, pool, registry.holder, registry.config, bearer(admin), bearer(user), registry.app.address
            )
    finally:
        await pool.close()
