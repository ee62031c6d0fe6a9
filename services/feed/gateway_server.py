"""Feed gateway server: the terminal-facing tick streams, fed by every shard."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from dataserver.registry.v1 import registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2_grpc

from services.common.auth import Authenticator
from services.common.clients import ServiceCaller, open_channel
from services.common.clock import Clock, clock_from_settings
from services.common.config import Settings
from services.common.db import Pool
from services.common.looplag import watch_loop_lag
from services.common.server import GrpcApp, build_app, run_service
from services.common.tls import server_credentials
from services.feed.gateway import watchlist
from services.feed.gateway.hub import Hub
from services.feed.gateway.market import INJECTED_CLOCK_POLL_SECONDS, REAL_CLOCK_POLL_SECONDS, MarketWatch
from services.feed.gateway.servicer import SERVICE_NAME, GatewayServicer, register
from services.feed.gateway.terminals import Terminals

DEFAULT_PORT = 50053


@dataclass
class Gateway:
    app: GrpcApp
    hub: Hub
    terminals: Terminals
    market: MarketWatch
    servicer: GatewayServicer


def create_server(settings: Settings, pool: Pool, clock: Clock | None = None) -> Gateway:
    """`clock` (tests) replaces MARKET_CLOCK's clock for the market state; an injected clock may
    jump, so the market watch looks at it often instead of sleeping until the next change."""
    hub = Hub(settings.gateway_shard_addrs, f"gateway-{uuid.uuid4().hex[:8]}", settings.service_token)
    terminals = Terminals(hub, settings.gateway_batch_seconds)
    market = MarketWatch(
        clock or clock_from_settings(settings),
        lambda: terminals.streams,
        INJECTED_CLOCK_POLL_SECONDS if clock is not None else REAL_CLOCK_POLL_SECONDS,
    )
    subscription_channel = open_channel(settings.subscription_addr, watchlist.CHANNEL_OPTIONS)
    registry_channel = open_channel(settings.registry_addr)
    servicer = GatewayServicer(
        hub,
        terminals,
        subscription_pb2_grpc.SubscriptionServiceStub(subscription_channel),
        registry_pb2_grpc.RegistryServiceStub(registry_channel),
        ServiceCaller("subscription", settings.service_token),
        market,
    )
    servicer.chain_rate = settings.option_chain_rate
    app = build_app(
        [SERVICE_NAME],
        lambda server: register(servicer, server),
        host=settings.grpc_host,
        port=settings.grpc_port,
        authenticator=Authenticator(settings.auth_mode, pool),
        grace=settings.shutdown_grace_seconds,
        tls=server_credentials(settings),
    )

    async def start_background() -> None:
        hub.start(app.spawn)
        terminals.start(app.spawn)
        app.spawn(market.run(), "gateway-market-watch")
        app.spawn(watch_loop_lag(), "gateway-loop-lag")

    app.before_serving.append(start_background)
    app.on_drain.append(lambda: terminals.drain(settings.gateway_drain_seconds))
    app.on_stop.extend((hub.close, subscription_channel.close, registry_channel.close))
    return Gateway(app, hub, terminals, market, servicer)


def serve() -> None:
    run_service("feed-gateway", DEFAULT_PORT, create_server)
