"""Registry server: `create_server()` builds it on a port; `serve()` runs it from config."""

from __future__ import annotations

from dataclasses import dataclass

import uvloop
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.auth import Authenticator
from services.common.config import Settings
from services.common.last_prices import GatewayLastPrices, LastPriceSource, NoLastPrices
from services.common.market_calendar import today_ist
from services.common.server import GrpcApp, build_app, serve_service
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

    async def load_initial_master(self) -> None:
        """Serves today's master from Postgres if it is there, else loads the configured source."""
        trading_date = today_ist()
        if not await self.holder.restore(trading_date):
            await self.holder.load(self.config.resolve(self.config.default_source, "", trading_date), trading_date)


def create_server(settings: Settings, pool: AsyncConnectionPool, *, prices: LastPriceSource | None = None) -> Registry:
    store = RegistryStore(pool)
    holder = MasterHolder(store)
    config = MasterConfig(
        default_source=settings.effective_master_source,
        cache_dir=settings.data_dir / "masters",
        seed=settings.master_seed,
        scale=settings.master_scale,
        master_file=settings.master_file,
    )
    servicer = RegistryServicer(holder, store, config, prices or NoLastPrices())
    app = build_app(
        [SERVICE_NAME],
        lambda server: registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
    )
    return Registry(app, holder, config)


async def _create(settings: Settings, pool: AsyncConnectionPool | None) -> GrpcApp:
    assert pool is not None
    prices = GatewayLastPrices(settings.gateway_addr, settings.service_token)
    registry = create_server(settings, pool, prices=prices)
    registry.app.on_stop.append(prices.close)
    registry.app.until_ready = registry.load_initial_master
    return registry.app


def serve() -> None:
    uvloop.run(serve_service("registry", DEFAULT_PORT, _create))
