"""One WebSocket connection to the broker feed (Dhan v2 or the simulator), with picows.

picows calls `on_ws_frame` synchronously for each frame of a read, so ingest costs no task
switch per frame; the records of a whole read burst are handed on once, at its last frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from urllib.parse import urlencode

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from services.feed.shard.cache import Ingest

log = logging.getLogger(__name__)


def feed_url(base: str, client_id: str, token: str) -> str:
    """Dhan's auth is the query string: version, token, clientId, authType."""
    query = urlencode({"version": 2, "token": token, "clientId": client_id, "authType": 2})
    if "?" in base:
        return f"{base}&{query}"
    return f"{base.rstrip('/')}/?{query}"


class _Listener(WSListener):
    def __init__(self, connection: BrokerConnection) -> None:
        self._connection = connection

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._connection.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        connection = self._connection
        if frame.msg_type == WSMsgType.BINARY:
            connection.ingest.frame(frame.get_payload_as_bytes(), time.monotonic())
            if frame.last_in_buffer:
                connection.flush()
        elif frame.msg_type == WSMsgType.CLOSE:
            connection.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            connection.close()
        elif frame.msg_type == WSMsgType.TEXT:
            log.info("text frame from the feed", extra={"text": frame.get_payload_as_utf8_text()[:200]})

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._connection.on_disconnected()  # picows calls this from connection_lost: the socket is closed


# How long a graceful close may take (sending what is queued) before the socket is
# aborted: a peer that stopped reading would otherwise hold it open, and counted against
# the account's connections, while the shard waits to open its next one.
CLOSE_GRACE_SECONDS = 2.0


class BrokerConnection:
    """One socket. `disconnected` is set only once it is closed (picows reports it from
    connection_lost), so a shard that waits for it before opening the next never holds two."""

    def __init__(
        self, ingest: Ingest, on_records: Callable[[bytes, int], None], close_grace: float = CLOSE_GRACE_SECONDS
    ) -> None:
        self.ingest = ingest
        self._on_records = on_records
        self._close_grace = close_grace
        self._abort: asyncio.TimerHandle | None = None
        self.transport: WSTransport | None = None
        self.disconnected = asyncio.Event()
        self.close_code: object = None

    async def open(self, url: str, timeout: float = 10.0) -> None:
        await ws_connect(lambda: _Listener(self), url, websocket_handshake_timeout=timeout, enable_auto_pong=True)

    def flush(self) -> None:
        blob, count = self.ingest.take()
        if count:
            self._on_records(blob, count)

    def send_text(self, message: str) -> None:
        if self.transport is not None and not self.disconnected.is_set():
            self.transport.send(WSMsgType.TEXT, message.encode())

    def close(self) -> None:
        """Closes the socket: gracefully, then by abort if that has not finished within the
        grace. `disconnected` tells when it is gone."""
        if self.transport is None or self.disconnected.is_set():
            return
        self.transport.disconnect()
        if self._abort is None:
            self._abort = asyncio.get_running_loop().call_later(self._close_grace, self._abort_now)

    @property
    def closing(self) -> bool:
        return self._abort is not None

    def on_disconnected(self) -> None:
        if self._abort is not None:
            self._abort.cancel()
        self.disconnected.set()

    def _abort_now(self) -> None:
        if self.transport is not None and not self.disconnected.is_set():
            log.warning("graceful close did not finish; aborting the socket", extra={"grace": self._close_grace})
            self.transport.disconnect(graceful=False)
