"""What a silenced connection's socket listens with: the socket stays open (and counted
against its client id, as Dhan counts a silent socket until its own timeout), nothing is
sent, and what the client sends is held unread, so no request applies and no ping is
answered. But the client closing its socket is heard at once, as a server's TCP stack hears
it whatever its application does: the slot is released then, not never.

The WebSocket protocol object is swapped out of the transport while silenced (asyncio's
``set_protocol``) and given back, with what was held, on resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection


class Held(asyncio.Protocol):
    """Stands in for a silenced connection's WebSocket protocol on its transport."""

    def __init__(self, ws: ServerConnection, on_client_gone: Callable[[], None], limit: int) -> None:
        self._ws = ws
        self._on_client_gone = on_client_gone
        self._limit = limit
        self._data = bytearray()
        self._released = False

    def data_received(self, data: bytes) -> None:
        self._data += data
        if len(self._data) >= self._limit:
            # Like a full receive buffer: the client's sends wait (its close is then unheard).
            self._ws.transport.pause_reading()

    def eof_received(self) -> None:
        # The client closed: what it sent is moot. WebSocket's own handling of a close
        # without a close frame (1006) ends the connection and its handler; returning None
        # lets the transport close.
        self._give_back()
        self._on_client_gone()
        self._ws.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._give_back()
        self._on_client_gone()
        self._ws.connection_lost(exc)

    def pause_writing(self) -> None:
        self._ws.pause_writing()

    def resume_writing(self) -> None:
        self._ws.resume_writing()

    def release(self) -> None:
        """Gives the socket back to the WebSocket protocol, which then reads what was held
        (a ping sent meanwhile is answered then)."""
        if self._released:
            return
        self._give_back()
        data, self._data = bytes(self._data), bytearray()
        transport = self._ws.transport
        if not transport.is_closing():
            transport.resume_reading()
            if data:
                self._ws.data_received(data)

    def _give_back(self) -> None:
        if not self._released:
            self._released = True
            self._ws.transport.set_protocol(self._ws)


def hold(ws: ServerConnection, on_client_gone: Callable[[], None], limit: int) -> Held:
    """Silences ``ws``'s reading side; ``on_client_gone`` runs when the client closes or the
    socket is lost while held."""
    held = Held(ws, on_client_gone, limit)
    ws.transport.set_protocol(held)
    return held
