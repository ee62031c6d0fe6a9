"""Registry server: `create_server()` builds it on a port; `serve()` runs it from config."""

from __future__ import annotations

import asyncio
import logging

from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.auth import Authenticator
from services.common.config import Settings, load_settings
from services.common.db import open_pool, resolve_database_url
from services.common.jsonlog import configure_logging
from services.common.market_calendar import today_ist
from services.common.metrics import start_metrics_server
from services.common.migrate import migrate
from services.common.server import GrpcApp, build_app, run_until_signalled
from services.registry.loader import MasterHolder
from services.registry.prices import LastPriceSource, NoLastPrices
from services.registry.servicer import MasterConfig, RegistryServicer
from services.registry.store import RegistryStore

log = logging.getLogger(__name__)

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
DEFAULT_PORT = 50051


def create_server(
    settings: Settings, pool: AsyncConnectionPool, *, prices: LastPriceSource | None = None
) -> tuple[GrpcApp, MasterHolder, MasterConfig]:
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
    return app, holder, config


async def load_initial_master(holder: MasterHolder, config: MasterConfig) -> None:
    """Serves today's master from Postgres if it is there, else loads the configured source."""
    trading_date = today_ist()
    if not await holder.restore(trading_date):
        await holder.load(config.resolve(config.default_source, "", trading_date), trading_date)


async def serve() -> None:
    settings = load_settings(grpc_port=DEFAULT_PORT)
    configure_logging("registry", settings.log_level)
    conninfo = resolve_database_url(settings)
    await migrate(conninfo)
    pool = await open_pool(conninfo, max_size=settings.db_pool_max_size, name="registry")
    app, holder, config = create_server(settings, pool)
    app.on_stop.append(pool.close)
    metrics_port = start_metrics_server(settings.metrics_port, settings.grpc_host)
    await app.start()
    log.info("registry started", extra={"port": app.port, "metrics_port": metrics_port})
    await load_initial_master(holder, config)
    await app.set_serving(True)
    await run_until_signalled(app, settings.shutdown_grace_seconds)


def main() -> None:
    asyncio.run(serve())
