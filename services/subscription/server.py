"""Subscription server: `create_server()` wires the modules on a port; `serve()` runs it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc

from services.common.auth import Authenticator
from services.common.clients import ServiceCaller, open_channel
from services.common.clock import Clock, clock_from_settings
from services.common.config import Settings
from services.common.db import Pool
from services.common.last_prices import GatewayLastPrices, LastPriceSource
from services.common.ratelimit import RateLimiter
from services.common.server import GrpcApp, build_app, run_service
from services.common.tls import server_credentials
from services.subscription.account_usage import AccountGauges, AccountLayout
from services.subscription.admin import Admin
from services.subscription.credentials import Credentials
from services.subscription.model import Budget
from services.subscription.notifier import ChangeNotifier
from services.subscription.recenter import Recentering
from services.subscription.recenter_policy import RecenterPolicy
from services.subscription.reports import Reports
from services.subscription.resolver import ChainWidths, UnitResolver
from services.subscription.servicer import SubscriptionServicer
from services.subscription.shard_health import HealthReports
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
    settings: Settings,
    pool: Pool,
    conninfo: str | None = None,
    *,
    prices: LastPriceSource | None = None,
    clock: Clock | None = None,
    recenter_policy: RecenterPolicy | None = None,
) -> Subscription:
    """`conninfo` is the database of the notifier's own connection (the pool's by default);
    `prices` the last-price source (the gateway's by default); `clock` the time end of day
    checks against the close (MARKET_CLOCK's by default); `recenter_policy` the sweep's rule
    (the settings', on the real monotonic and wall clocks, by default)."""
    budget = Budget(settings.feed_connections, settings.feed_instruments_per_connection)
    layout = AccountLayout.of(settings, budget)
    registry_channel = open_channel(settings.registry_addr)
    gateway_prices = None
    if prices is None:
        prices = gateway_prices = GatewayLastPrices(settings.gateway_addr, settings.service_token)
    resolver = UnitResolver(
        registry_channel,
        ServiceCaller("registry", settings.service_token),
        prices,
        ChainWidths(settings.stock_strikes_each_side, settings.index_strikes_each_side, settings.max_strikes_each_side),
    )
    notifier = ChangeNotifier(conninfo or _conninfo(pool))
    admin = Admin(
        pool,
        budget,
        settings.move_settle_seconds,
        settings.feed_failover_seconds,
        settings.feed_rebalance_spread,
    )
    clock = clock or clock_from_settings(settings)
    servicer = SubscriptionServicer(
        budget,
        Watchlists(pool, budget, resolver, Quota(settings.user_max_items, settings.user_max_instruments)),
        TierB(pool, budget, resolver),
        Recentering(pool, budget, resolver, recenter_policy or _policy(settings), prices),
        admin,
        Reports(pool, budget, clock, layout),
        Streams(pool, notifier, shard_limit=budget.per_connection, retention_seconds=LOG_RETENTION_SECONDS),
        clock,
        HealthReports(pool, budget.connections, settings.shard_health_report_seconds),
        Credentials(pool, [account.account_id for account in settings.accounts]),
    )
    app = build_app(
        [SERVICE_NAME],
        lambda server: subscription_pb2_grpc.add_SubscriptionServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
        grace=settings.shutdown_grace_seconds,
        tls=server_credentials(settings),
        rate_limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
    )

    async def start_background() -> None:
        notifier.start(app.spawn)
        app.spawn(_upkeep(admin, AccountGauges(pool, budget, layout)), "subscription-upkeep")

    app.before_serving.append(start_background)
    app.on_stop.append(registry_channel.close)
    if gateway_prices is not None:
        app.on_stop.append(gateway_prices.close)
    return Subscription(app, admin, notifier)


def _policy(settings: Settings) -> RecenterPolicy:
    return RecenterPolicy(
        settings.recenter_hysteresis_strikes,
        settings.recenter_cooldown_seconds,
        settings.recenter_max_price_age_seconds,
    )


def _conninfo(pool: Pool) -> str:
    if not isinstance(pool.conninfo, str):
        raise TypeError("the pool's conninfo is computed; pass the notifier's conninfo")
    return pool.conninfo


async def _upkeep(admin: Admin, accounts: AccountGauges) -> None:
    """Fails over shards down too long, finishes settled shard moves, evens out an uneven pool,
    refreshes the per-account gauges and prunes the change logs, on every replica (the ledger
    lock makes concurrent runs harmless). Failover reads the shards' reports on this period:
    it depends on no notification arriving."""
    ticks = 0
    while True:
        await asyncio.sleep(UPKEEP_SECONDS)
        try:
            await admin.fail_over()
            await admin.finish_settled_moves()
            await admin.rebalance_if_uneven()
            await accounts.refresh()
            ticks += 1
            if ticks % 120 == 0:
                await admin.prune(LOG_RETENTION_SECONDS)
        except Exception:  # keep the loop alive; the next tick retries
            log.exception("subscription upkeep failed")


def serve() -> None:
    run_service("subscription", DEFAULT_PORT, create_server)
