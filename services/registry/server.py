"""Registry server: `create_server()` builds it on a port; `serve()` runs it from config."""

from __future__ import annotations

from dataclasses import dataclass

from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.auth import Authenticator
from services.common.clock import Clock, clock_from_settings, trading_date_of
from services.common.config import Settings
from services.common.db import Pool
from services.common.last_prices import GatewayLastPrices, LastPriceSource
from services.common.server import GrpcApp, build_app, run_service
from services.common.tls import server_credentials
from services.registry.loader import MasterHolder
from services.registry.servicer import MasterConfig, RegistryServicer
from services.registry.store import RegistryStore

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
DEFAULT_PORT = 50051


@dataclass
class Registry:
    app: GrpcApp
    holder: MasterHolder
    config: MasterConfig
    clock: Clock  # its trading date is the start-up master's

    async def load_initial_master(self) -> None:
        """Serves the day's master from Postgres if it is there, else loads the configured source."""
        trading_date = trading_date_of(self.clock)
        if not await self.holder.restore(trading_date):
            await self.holder.load(self.config.resolve(self.config.default_source, "", trading_date), trading_date)


def create_server(
    settings: Settings, pool: Pool, *, prices: LastPriceSource | None = None, clock: Clock | None = None
) -> Registry:
    """`prices` is the last-price source for option chains (the gateway's by default); `clock`
    dates the generated master (MARKET_CLOCK's by default)."""
    clock = clock or clock_from_settings(settings)
    store = RegistryStore(pool)
    holder = MasterHolder(store)
    config = MasterConfig(
        default_source=settings.effective_master_source,
        cache_dir=settings.data_dir / "masters",
        seed=settings.master_seed,
        scale=settings.master_scale,
        master_file=settings.master_file,
    )
    gateway_prices = None
    if prices is None:
        prices = gateway_prices = GatewayLastPrices(settings.gateway_addr, settings.service_token)
    servicer = RegistryServicer(holder, store, config, prices, clock)
    app = build_app(
        [SERVICE_NAME],
        lambda server: registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
        grace=settings.shutdown_grace_seconds,
        tls=server_credentials(settings),
    )
    registry = Registry(app, holder, config, clock)
    app.before_serving.append(registry.load_initial_master)
    if gateway_prices is not None:
        app.on_stop.append(gateway_prices.close)
    return registry


def serve() -> None:
    run_service("registry", DEFAULT_PORT, create_server)
