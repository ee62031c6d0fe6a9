"""A real registry and subscription service on port 0, over one test database."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from dataserver.subscription.v1 import subscription_pb2_grpc

from services.common.auth import create_api_key
from services.common.clock import Clock
from services.common.config import Settings
from services.common.db import Pool, open_pool
from services.common.last_prices import LastPriceSource, NoLastPrices
from services.subscription.recenter_policy import RecenterPolicy
from services.subscription.server import create_server
from tests.registry_fixtures import bearer, running_registry


@dataclass
class SubscriptionUnderTest:
    channel: grpc.aio.Channel
    stub: subscription_pb2_grpc.SubscriptionServiceStub
    pool: Pool
    settings: Settings
    admin: tuple[tuple[str, str], ...]
    keys: dict[str, tuple[tuple[str, str], ...]]
    address: str

    async def user(self, name: str) -> tuple[tuple[str, str], ...]:
        if name not in self.keys:
            self.keys[name] = bearer(await create_api_key(self.pool, name, "user"))
        return self.keys[name]

    async def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            # A test's own SQL text: psycopg types queries as LiteralString.
            cursor = await conn.execute(sql, params or None)
            return await cursor.fetchall()


@asynccontextmanager
async def running_subscription(
    conninfo: str,
    masters_dir: Path,
    *,
    clock: Clock | None = None,
    prices: LastPriceSource | None = None,
    recenter_policy: RecenterPolicy | None = None,
    master_scale: str = "small",
    **overrides: Any,
) -> AsyncIterator[SubscriptionUnderTest]:
    """`clock`, `prices` and `recenter_policy` as in create_server (no live prices by default);
    `master_scale` the registry's generated master."""
    async with running_registry(conninfo, masters_dir, scale=master_scale) as registry:
        settings = dataclasses.replace(
            Settings(),
            auth_mode="api_key",
            registry_addr=registry.address,
            shutdown_grace_seconds=0,
            **{"move_settle_seconds": 0.3, **overrides},
        )
        pool = await open_pool(conninfo, max_size=8)
        admin_token = await create_api_key(pool, "ops", "admin")
        # The services present a service key to each other, never an admin key.
        settings = dataclasses.replace(settings, service_token=await create_api_key(pool, "service", "service"))
        subscription = create_server(
            settings, pool, conninfo, prices=prices or NoLastPrices(), clock=clock, recenter_policy=recenter_policy
        )
        try:
            async with subscription.app, grpc.aio.insecure_channel(subscription.app.address) as channel:
                yield SubscriptionUnderTest(
                    channel,
                    subscription_pb2_grpc.SubscriptionServiceStub(channel),
                    pool,
                    settings,
                    bearer(admin_token),
                    {},
                    subscription.app.address,
                )
        finally:
            await pool.close()
