"""The simulator as one object: market + WebSocket feed + control API, with the same
faults in-process (for tests) as over HTTP (for people and other processes)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any, Literal

from services.dhan.protocol import DisconnectReason

from .auth import mask
from .catalog import Asset, Catalog
from .control import ControlServer
from .market import Market
from .server import ConnectionInfo, FeedConnection, FeedServer
from .settings import SimulatorSettings

log = logging.getLogger(__name__)

Target = int | Literal["all"]


class Simulator:
    """``await start()`` -> (ws_port, control_port); ``await stop()``. Fault methods take a
    connection id or "all", return the affected ids and raise KeyError for an unknown id."""

    def __init__(
        self,
        settings: SimulatorSettings | None = None,
        *,
        catalog: Catalog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or SimulatorSettings()
        self._catalog = catalog
        self._clock = clock
        self.market: Market | None = None
        self.feed: FeedServer | None = None
        self.control: ControlServer | None = None
        self.started_at = 0.0

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> tuple[int, int]:
        s = self.settings
        if self._catalog is None:
            # Parsing (or generating) a master is blocking work: keep the loop free.
            if s.master_path is not None:
                self._catalog = await asyncio.to_thread(Catalog.load, s.master_path)
            else:
                self._catalog = await asyncio.to_thread(
                    Catalog.generated, s.master_cache_dir, s.master_seed, s.master_scale, s.trading_date
                )
        self.market = Market(self._catalog, seed=s.seed, clock=self._clock, master_seed=s.master_seed)
        self.feed = FeedServer(s, self.market)
        self.control = ControlServer(self)
        ws_port = await self.feed.start()
        try:
            control_port = await self.control.start(s.control_host, s.control_port)
        except BaseException:
            await self.feed.stop()
            raise
        self.started_at = time.time()
        log.info(
            "feed simulator listening",
            extra={
                "ws_port": ws_port,
                "control_port": control_port,
                "instruments": len(self._catalog),
                "burst": s.burst,
            },
        )
        return ws_port, control_port

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
        if self.feed is not None:
            await self.feed.stop()

    async def serve(self) -> None:
        """Runs until SIGTERM or SIGINT (the CLI's entry point)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
            log.info("stopping feed simulator")
        finally:
            await self.stop()

    @property
    def ws_port(self) -> int:
        return self.feed.port if self.feed else 0

    @property
    def control_port(self) -> int:
        return self.control.port if self.control else 0

    def url(self, token: str = "token", client_id: str = "1000000001", host: str = "127.0.0.1") -> str:
        """The feed URL in Dhan's form."""
        return f"ws://{host}:{self.ws_port}/?version=2&token={token}&clientId={client_id}&authType=2"

    # --- inspection ---------------------------------------------------------------

    def connections(self) -> list[ConnectionInfo]:
        return [c.info() for c in self._feed().connections()]

    def connection(self, conn_id: int) -> ConnectionInfo | None:
        conn = self._feed().get(conn_id)
        return conn.info() if conn else None

    def health(self) -> dict[str, Any]:
        feed = self._feed()
        return {
            "status": "ok",
            "ws_port": feed.port,
            "connections": len(feed.connections()),
            "handshakes": feed.handshakes,
            "instruments": len(self._catalog or ()),
            "books": len(self.market or ()),
            "packets_sent": feed.packets_sent,
            "disconnects_sent": {str(reason): n for reason, n in sorted(feed.disconnects_sent.items())},
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "burst": self.settings.burst,
        }

    # --- market moves -------------------------------------------------------------

    def move(self, asset: Asset, symbol: str, percent: float) -> float:
        """Moves an underlying's price by `percent` (KeyError when it is not listed)."""
        if self.market is None:
            raise RuntimeError("the simulator is not started")
        return self.market.move(asset, symbol, percent)

    # --- faults -------------------------------------------------------------------

    def drop(self, target: Target) -> list[int]:
        return self._each(target, FeedConnection.drop)

    def silence(self, target: Target) -> list[int]:
        return self._each(target, FeedConnection.silence)

    def resume(self, target: Target) -> list[int]:
        return self._each(target, FeedConnection.resume)

    def disconnect(self, target: Target, reason: int = DisconnectReason.TOO_MANY_CONNECTIONS) -> list[int]:
        """Sends the disconnect packet and closes, in the background (returns at once)."""
        feed = self._feed()
        return self._each(target, lambda conn: feed.spawn(conn.disconnect(reason), f"feed-sim-disconnect-{conn.id}"))

    def expire_token(self, client_id: str, token: str | None = None) -> list[int]:
        """Expires `token` (by default every token the client id's open connections use), as
        Dhan does daily: those connections get 807 and close, and the token is refused with 807
        from then on; another token for the client id is accepted. Returns the closed ids."""
        feed = self._feed()
        conns = [c for c in feed.connections() if c.client_id == client_id and token in (None, c.token)]
        expired = {token} if token is not None else {c.token for c in conns}
        feed.expired_tokens.update(t for t in expired if t)
        log.info("access token expired", extra={"client": mask(client_id), "connections": len(conns)})
        for conn in conns:
            feed.spawn(conn.disconnect(DisconnectReason.ACCESS_TOKEN_EXPIRED), f"feed-sim-expire-{conn.id}")
        return [conn.id for conn in conns]

    def garbage(self, target: Target, size: int = 64, count: int = 1) -> list[int]:
        return self._each(target, lambda conn: conn.garbage(size, count))

    def _each(self, target: Target, action: Callable[[FeedConnection], Any]) -> list[int]:
        feed = self._feed()
        if target == "all":
            conns = feed.connections()
        else:
            conn = feed.get(int(target))
            if conn is None:
                raise KeyError(target)
            conns = [conn]
        for conn in conns:
            action(conn)
        return [conn.id for conn in conns]

    def _feed(self) -> FeedServer:
        if self.feed is None:
            raise RuntimeError("the simulator is not started")
        return self.feed
