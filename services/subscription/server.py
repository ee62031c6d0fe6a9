"""Subscription server: `create_server()` wires the modules on a port; `serve()` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import uvloop
from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.auth import Authenticator
from services.common.clients import ServiceCaller, open_channel
from services.common.config import Settings
from services.common.last_prices import GatewayLastPrices, LastPriceSource
from services.common.server import GrpcApp, build_app, serve_service
from services.subscription.admin import Admin
from services.subscription.model import Budget
from services.subscription.notifier import ChangeNotifier
from services.subscription.recenter import Recentering
from services.subscription.reports import Reports
from services.subscription.resolver import ChainWidths, UnitResolver
from services.subscription.servicer import SubscriptionServicer
from services.subscription.streams import Streams
from services.subscription.tier_b import TierB
from services.subscription.watchlists import Quota, Watchlists

log = logging.getLogger(__name__)

SERVICE_NAME = subscription_pb2.DESCRIPTOR.services_by_name["SubscriptionService"].full_name
DEFAULT_PORT = 50052
UPKEEP_SECONDS = 0.5
LOG_RETENTION_SECONDS = 600.0


@dataclass
class Subscription:
    app: GrpcApp
    admin: Admin
    notifier: ChangeNotifier


def create_server(
    settings: Settings, pool: AsyncConnectionPool, conninfo: str | None = None, *, prices: LastPriceSource | None = None
) -> Subscription:
    budget = Budget(settings.feed_connections, settings.feed_instruments_per_connection)
    registry_channel = open_channel(settings.registry_addr)
    gateway_prices = prices or GatewayLastPrices(settings.gateway_addr, settings.service_token)
    resolver = UnitResolver(
        registry_channel,
        ServiceCaller("registry", settings.service_token),
        gateway_prices,
        ChainWidths(settings.stock_strikes_each_side, settings.index_strikes_each_side, settings.max_strikes_each_side),
    )
    notifier = ChangeNotifier(conninfo or pool.conninfo)
    admin = Admin(pool, budget, settings.move_settle_seconds)
    servicer = SubscriptionServicer(
        budget,
        Watchlists(pool, budget, resolver, Quota(settings.user_max_items, settings.user_max_instruments)),
        TierB(pool, budget, resolver),
        Recentering(pool, budget, resolver, settings.recenter_hysteresis_strikes),
        admin,
        Reports(pool, budget),
        Streams(pool, notifier, shard_limit=budget.per_connection, retention_seconds=LOG_RETENTION_SECONDS),
    )
    app = build_app(
        [SERVICE_NAME],
        lambda server: subscription_pb2_grpc.add_SubscriptionServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
    )
    upkeep: list[asyncio.Task[None]] = []

    async def start_background() -> None:
        notifier.start()
        upkeep.append(asyncio.create_task(_upkeep(admin), name="subscription-upkeep"))

    async def stop_background() -> None:
        for task in upkeep:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await notifier.stop()
        await registry_channel.close()
        close = getattr(gateway_prices, "close", None)
        if close is not None:
            await close()

    app.until_ready = start_background
    app.on_stop.append(stop_background)
    return Subscription(app, admin, notifier)


async def _upkeep(admin: Admin) -> None:
    """Finishes settled shard moves and prunes the change logs, on every replica (the ledger
    lock makes concurrent runs harmless)."""
    ticks = 0
    while True:
        await asyncio.sleep(UPKEEP_SECONDS)
        try:
            await admin.finish_settled_moves()
            ticks += 1
            if ticks % 120 == 0:
                await admin.prune(LOG_RETENTION_SECONDS)
        except Exception:  # keep the loop alive; the next tick retries
            log.exception("subscription upkeep failed")


async def _create(settings: Settings, pool: AsyncConnectionPool | None) -> GrpcApp:
    assert pool is not None
    return create_server(settings, pool, pool.conninfo).app


def serve() -> None:
    uvloop.run(serve_service("subscription", DEFAULT_PORT, _create))
