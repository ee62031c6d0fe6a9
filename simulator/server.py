"""The WebSocket side: URL auth, JSON requests, Dhan's limits, and one send loop per
connection that ticks the market and writes one packet per binary frame.

Choices where Dhan's behaviour is not documented (protocol reference):

- Refusals happen after the WebSocket handshake, as Dhan does for auth: a disconnect
  packet (code 50) with the reason, then a close frame (1000, reason name).
  URL checks, in order: path not "/" or ``version`` != "2" -> 814 invalid request;
  no token -> 808 authentication failed; token in ``expired_tokens`` -> 807; token not in
  ``valid_tokens`` -> 809 access token invalid; no or unknown ``clientId`` -> 810;
  ``authType`` != "2" -> 808.
- A request parse_request rejects (bad JSON, > 100 instruments in one message, a count
  mismatch, an unknown code or segment) -> 814 and close, or ignored when
  ``invalid_request_action`` is "ignore". Nothing of a refused message is applied.
- A subscribe that would take the connection past 5,000 distinct instruments -> 804 and
  close (nothing of that message is applied). Re-subscribing an instrument changes its
  mode and does not count twice; any unsubscribe code removes an instrument whatever its
  mode.
- The 6th connection of a client id makes the server send 805 to the oldest open one
  and close it; the new one is served. A silenced connection counts until its client
  closes its socket, as Dhan counts a silent socket until its own timeout.
- Binary frames from clients (the official client's 83-byte v1 leftover) are counted and
  ignored. RequestCode 12 closes the connection normally (1000), without a packet.

Hot path: one WebSocket frame per packet, a whole batch written with one
``transport.write``, then ``drain()`` for back-pressure. ``await ws.send()`` per packet
would pay websockets' context-manager machinery and a syscall for each; batching removes
both, so the price models, not framing, bound the rate. The send loop frames packets itself
(a constant header: server frames are unmasked) unless an extension was negotiated, then
through ``protocol.send_binary`` (the websockets sans-I/O layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidState
from websockets.protocol import OPEN

from services.common.keys import Key
from services.dhan.encode import encode_disconnect
from services.dhan.protocol import DisconnectReason, FeedMode, RequestCode
from services.dhan.requests import RequestError, parse_request

from .auth import check_credentials, client_id, mask, token
from .framing import Framer, garbage_frame, send_time_stamp
from .market import Book, Market
from .ratelimit import TokenBucket
from .settings import SimulatorSettings
from .silence import Held, hold
from .tasks import Tasks

log = logging.getLogger(__name__)

_SUBSCRIBE = {
    RequestCode.SUBSCRIBE_TICKER: FeedMode.TICKER,
    RequestCode.SUBSCRIBE_QUOTE: FeedMode.QUOTE,
    RequestCode.SUBSCRIBE_FULL: FeedMode.FULL,
}
_UNSUBSCRIBE = frozenset({RequestCode.UNSUBSCRIBE_TICKER, RequestCode.UNSUBSCRIBE_QUOTE, RequestCode.UNSUBSCRIBE_FULL})
_TICKER, _QUOTE, _FULL = int(FeedMode.TICKER), int(FeedMode.QUOTE), int(FeedMode.FULL)
_BATCH = 1024  # packets per write; bounds the time between yields to the event loop
_MAX_SIZE = 1 << 20  # the largest message a client may send
_MAX_HELD = _MAX_SIZE  # what a silenced connection holds unread before it stops reading


class ConnState(StrEnum):
    OPEN = "open"
    SILENCED = "silenced"  # no data, no pings, what it reads held (so no pongs either); a close is heard
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class ConnectionInfo:
    id: int
    client_id: str
    remote: str
    connected_at: float  # UTC epoch seconds
    subscriptions: tuple[tuple[str, int, str], ...]  # (segment, security id, mode name)
    packets_sent: int
    bytes_sent: int
    requests: int
    binary_frames_ignored: int
    state: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_id": self.client_id,
            "remote": self.remote,
            "connected_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.connected_at))
            + f".{int(self.connected_at % 1 * 1000):03d}Z",
            "subscription_count": len(self.subscriptions),
            "subscriptions": [list(s) for s in self.subscriptions],
            "packets_sent": self.packets_sent,
            "bytes_sent": self.bytes_sent,
            "requests": self.requests,
            "binary_frames_ignored": self.binary_frames_ignored,
            "state": self.state,
        }


def _reason_text(reason: int) -> str:
    try:
        return f"{reason} {DisconnectReason(reason).name.lower().replace('_', ' ')}"
    except ValueError:
        return str(reason)


class _Outcome(Enum):
    """How sending a tick's due packets ended."""

    SENT = "sent"  # all of them, or the connection has nothing to send
    CAPPED = "capped"  # the caps refused the rest: dropped
    CLOSING = "closing"  # the connection is closing


class FeedConnection:
    """One accepted socket: its subscriptions, counters and send loop."""

    def __init__(self, server: FeedServer, ws: ServerConnection, conn_id: int, client_id: str, token: str = "") -> None:
        self.server = server
        self.ws = ws
        self.id = conn_id
        self.client_id = client_id
        self.token = token  # kept to expire it (control API); never logged
        remote = ws.remote_address
        self.remote = f"{remote[0]}:{remote[1]}" if remote else "?"
        self.connected_at = time.time()
        self.state = ConnState.OPEN
        self.subs: dict[Key, tuple[Book, int]] = {}
        self._entries: list[tuple[Book, int]] = []  # a snapshot of subs.values(), replaced on change
        self._cursor = 0
        self.bucket = TokenBucket(server.settings.connection_rate_cap)
        self.packets_sent = 0
        self.bytes_sent = 0
        self.requests = 0
        self.binary_frames_ignored = 0
        self._pump_task: asyncio.Task[None] | None = None
        self._held: Held | None = None  # while silenced

    # --- info ---------------------------------------------------------------------

    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            id=self.id,
            client_id=self.client_id,
            remote=self.remote,
            connected_at=self.connected_at,
            subscriptions=tuple((seg, sid, FeedMode(mode).name) for (seg, sid), (_, mode) in self.subs.items()),
            packets_sent=self.packets_sent,
            bytes_sent=self.bytes_sent,
            requests=self.requests,
            binary_frames_ignored=self.binary_frames_ignored,
            state=self.state.value,
        )

    # --- writing ------------------------------------------------------------------

    def _write(self, packets: Iterable[bytes], *, force: bool = False) -> int:
        """Frames each packet as its own binary message and writes them in one go;
        returns packets written: 0 once the connection is closing, and 0 while it is not
        open unless ``force`` (faults and the disconnect packet)."""
        ws = self.ws
        if ws.transport.is_closing() or not (force or self.state is ConnState.OPEN):
            return 0
        proto = ws.protocol
        n = nbytes = 0
        try:
            for packet in packets:
                proto.send_binary(packet)
                n += 1
                nbytes += len(packet)
        except InvalidState:
            return 0
        ws.transport.write(b"".join(proto.data_to_send()))
        self._count(n, nbytes)
        return n

    async def _drain(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.drain()

    # --- requests -----------------------------------------------------------------

    async def serve(self) -> None:
        self._pump_task = self.server.spawn(self._pump(), f"feed-sim-pump-{self.id}")
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.binary_frames_ignored += 1
                    continue
                self.requests += 1
                try:
                    keep = await self._handle(message)
                except ConnectionClosed:
                    raise
                except Exception:  # a simulator bug: answer like Dhan's server would, 800
                    log.exception("request failed", extra={"conn": self.id})
                    await self.disconnect(DisconnectReason.INTERNAL_ERROR)
                    keep = False
                if not keep:
                    break
        except ConnectionClosed:
            pass
        finally:
            self._pump_task.cancel()
            self.state = ConnState.CLOSED
            self.server._unregister(self)

    async def _handle(self, text: str) -> bool:
        """Applies one JSON request; False when the connection must end."""
        try:
            request = parse_request(text)
        except RequestError as error:
            log.info("invalid request", extra={"conn": self.id, "error": str(error)})
            if self.server.settings.invalid_request_action == "ignore":
                return True
            await self.disconnect(DisconnectReason.INVALID_REQUEST)
            return False
        code = request.code
        if code is RequestCode.DISCONNECT:
            self.state = ConnState.CLOSING
            self.server._unregister(self)
            return False  # the server closes with 1000 when the handler returns
        if code in _SUBSCRIBE:
            packets = self._subscribe(request.instruments, int(_SUBSCRIBE[code]))
            if packets is None:
                await self.disconnect(DisconnectReason.INSTRUMENTS_EXCEED_LIMIT)
                return False
            sent = self._write(packets)
            # Charge the caps so that subscribing cannot be used to outrun them.
            self.bucket.spend(sent)
            self.server.total_bucket.spend(sent)
            await self._drain()
        elif code in _UNSUBSCRIBE:
            for key in request.instruments:
                self.subs.pop(key, None)
            self._entries = list(self.subs.values())
        return True

    def _subscribe(self, instruments: list[tuple[str, int]], mode: int) -> list[bytes] | None:
        """Applies a subscribe; returns the packets to send (prev closes, then one
        snapshot each when enabled) or None when it would pass the instrument limit."""
        keys = list(dict.fromkeys(instruments))
        new = sum(1 for k in keys if k not in self.subs)
        if len(self.subs) + new > self.server.settings.max_instruments_per_connection:
            return None
        market = self.server.market
        books = [market.book(seg, sid) for seg, sid in keys]
        for key, book in zip(keys, books, strict=True):
            self.subs[key] = (book, mode)
        self._entries = list(self.subs.values())
        packets = [book.prev_close_packet() for book in books]
        if self.server.settings.snapshot_on_subscribe:
            stamp = self.server.settings.stamp_send_time
            for book in books:
                if mode == _FULL:
                    packets.append(book.full_packet(send_time_stamp()) if stamp else book.full_packet())
                elif mode == _TICKER:
                    packets.append(book.ticker_packet())
                else:
                    packets.append(book.quote_packet())
                    if book.is_derivative:
                        packets.append(book.oi_packet())
        return packets

    # --- send loop ----------------------------------------------------------------

    async def _pump(self) -> None:
        """Ticks the subscribed instruments round-robin at ``ticks_per_second`` each
        (or as fast as the caps allow in burst mode), capped by this connection's and
        the simulator's token buckets; ticks the caps refuse are dropped, not queued."""
        server = self.server
        settings = server.settings
        loop = asyncio.get_running_loop()
        interval, per_instrument, burst = settings.send_interval, settings.ticks_per_second, settings.burst
        framer = Framer(self.ws.protocol)
        last = loop.time()
        carry = 0.0
        server.pumps += 1
        try:
            while True:
                await asyncio.sleep(interval)
                t = loop.time()
                dt, last = t - last, t
                if self.state is not ConnState.OPEN:
                    if self.state is ConnState.SILENCED:
                        carry = 0.0
                        continue
                    return
                if not self._entries:
                    carry = 0.0
                    continue
                if burst:
                    want = 1 << 30
                else:
                    due = carry + per_instrument * len(self._entries) * dt
                    want = int(due)
                    carry = due - want
                outcome = await self._send_due(want, framer)
                if outcome is _Outcome.CAPPED:
                    carry = 0.0  # capped: drop, like a conflating feed
                elif outcome is _Outcome.CLOSING:
                    return  # the close frame is already queued
        except (ConnectionClosed, ConnectionError):
            return
        except Exception:
            log.exception("send loop failed", extra={"conn": self.id})
            server.spawn(self.disconnect(DisconnectReason.INTERNAL_ERROR), f"feed-sim-disconnect-{self.id}")
        finally:
            server.pumps -= 1

    async def _send_due(self, want: int, framer: Framer) -> _Outcome:
        """Sends ``want`` packets in batches of at most _BATCH, each as the caps grant it,
        with back-pressure from the client between batches."""
        ws = self.ws
        proto, transport = ws.protocol, ws.transport
        while want > 0 and self.state is ConnState.OPEN:
            entries = self._entries  # re-read after every await: (un)subscribes apply at once
            if not entries or transport.is_closing():
                break
            if framer.raw and proto.state is not OPEN:
                return _Outcome.CLOSING  # send_binary would raise InvalidState
            allowed = self._grant(min(want, _BATCH))
            if allowed == 0:
                return _Outcome.CAPPED
            framer.begin()
            try:
                sent, nbytes = self._pick(entries, allowed, framer.emit)
            except InvalidState:
                return _Outcome.CLOSING
            if sent > allowed:  # a Quote+OI pair overshot by one
                self._charge(sent - allowed)
            self._write_frames(framer, sent, nbytes)
            want -= sent
            await ws.drain()  # back-pressure from a slow client
            if want > 0:
                await asyncio.sleep(0)
        return _Outcome.SENT

    def _grant(self, want: int) -> int:
        """Packets the caps allow now, at most ``want``: this connection's bucket, then the
        simulator's, shared evenly between the send loops."""
        server, mine = self.server, self.bucket
        total = server.total_bucket
        granted = mine.take(want)
        allowed = total.take(granted, limit=total.capacity / max(1, server.pumps))
        if allowed < granted:
            mine.spend(allowed - granted)  # give back what the total cap refused
        return allowed

    def _charge(self, extra: int) -> None:
        """Charges packets sent beyond a grant to both caps."""
        self.bucket.spend(extra)
        self.server.total_bucket.spend(extra)

    def _pick(self, entries: list[tuple[Book, int]], allowed: int, emit: Callable[[bytes], None]) -> tuple[int, int]:
        """Ticks books round-robin from the cursor, emitting each one's packets in its mode,
        until ``allowed`` are out (a Quote+OI pair may overshoot by one); returns (packets,
        bytes)."""
        settings = self.server.settings
        stamp = settings.stamp_send_time
        now = self.server.market.now()
        n = len(entries)
        i = self._cursor % n
        sent = nbytes = 0
        while sent < allowed:
            book, mode = entries[i]
            i += 1
            if i == n:
                i = 0
            book.tick(now)
            if mode == _FULL:
                packet = book.full_packet(send_time_stamp()) if stamp else book.full_packet()
            elif mode == _TICKER:
                packet = book.ticker_packet()
            else:
                packet = book.quote_packet()
                if book.is_derivative:
                    oi = book.oi_packet()
                    emit(oi)
                    sent += 1
                    nbytes += len(oi)
            emit(packet)
            sent += 1
            nbytes += len(packet)
        self._cursor = i
        return sent, nbytes

    def _write_frames(self, framer: Framer, sent: int, nbytes: int) -> None:
        """Writes a batch's frames in one go and counts its packets."""
        self.ws.transport.write(framer.take())
        self._count(sent, nbytes)

    def _count(self, sent: int, nbytes: int) -> None:
        self.packets_sent += sent
        self.bytes_sent += nbytes
        self.server.packets_sent += sent

    # --- faults and closing -------------------------------------------------------

    async def disconnect(self, reason: int) -> None:
        """Sends the disconnect packet with ``reason``, then closes (1000)."""
        if self.state in (ConnState.CLOSING, ConnState.CLOSED):
            return
        was_silenced = self.state is ConnState.SILENCED
        self.state = ConnState.CLOSING
        self.server._unregister(self)
        if was_silenced:
            self._resume_io()  # the closing handshake needs to read the client's close frame
        log.info("disconnecting", extra={"conn": self.id, "client": mask(self.client_id), "reason": reason})
        if self._write([encode_disconnect(reason)], force=True):
            self.server.disconnects_sent[int(reason)] += 1
        with contextlib.suppress(Exception):
            await self.ws.close(1000, _reason_text(reason))

    def drop(self) -> None:
        """Closes the TCP connection at once, without a close frame."""
        if self.state is ConnState.CLOSED:
            return
        log.info("dropping", extra={"conn": self.id, "client": mask(self.client_id)})
        self.state = ConnState.CLOSED
        self.server._unregister(self)
        self.ws.transport.abort()

    def silence(self) -> None:
        """Stops data and keepalive pings and holds what the client sends unread (so its
        pings go unanswered) without closing; ``resume`` undoes it. The client closing its
        socket still ends the connection and frees its slot."""
        if self.state is not ConnState.OPEN:
            return
        log.info("silencing", extra={"conn": self.id, "client": mask(self.client_id)})
        self.state = ConnState.SILENCED
        self._held = hold(self.ws, self._client_gone, _MAX_HELD)
        # websockets' keepalive task would ping, and then close the socket after
        # ping_timeout since no pong can be read; stop it and restart it on resume.
        task = self.ws.keepalive_task
        if task is not None:
            task.cancel()
            self.ws.keepalive_task = None

    def _client_gone(self) -> None:
        """The client closed (or lost) a silenced connection's socket."""
        if self.state is ConnState.SILENCED:
            log.info("client closed a silenced connection", extra={"conn": self.id, "client": mask(self.client_id)})
            self.state = ConnState.CLOSING
        self.server._unregister(self)

    def resume(self) -> None:
        if self.state is not ConnState.SILENCED:
            return
        log.info("resuming", extra={"conn": self.id, "client": mask(self.client_id)})
        self.state = ConnState.OPEN
        self._resume_io()

    def _resume_io(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release()
        if self.ws.keepalive_task is None and self.state is ConnState.OPEN:
            self.ws.start_keepalive()

    def garbage(self, size: int, count: int = 1) -> int:
        """Sends ``count`` binary frames of ``size`` random bytes that are no packet."""
        return self._write((garbage_frame(size) for _ in range(count)), force=True)


class FeedServer:
    """The WebSocket listener and the registry of its connections."""

    def __init__(self, settings: SimulatorSettings, market: Market) -> None:
        self.settings = settings
        self.market = market
        self.total_bucket = TokenBucket(settings.total_rate_cap)
        self.packets_sent = 0
        self.pumps = 0
        self.handshakes = 0  # WebSocket connections opened, refused ones included
        self.disconnects_sent: Counter[int] = Counter()  # disconnect packets sent, by reason
        self._ids = itertools.count(1)
        self._connections: dict[int, FeedConnection] = {}
        self._by_client: dict[str, list[FeedConnection]] = {}
        # Tokens expired while running (Simulator.expire_token): refused with 807 from then on.
        self.expired_tokens: set[str] = set(settings.expired_tokens)
        self._server: Server | None = None
        self._tasks = Tasks()  # send loops and background disconnects
        self.port = 0

    async def start(self) -> int:
        s = self.settings
        self._server = await serve(
            self._handler,
            s.host,
            s.port,
            # Per-frame deflate would cost more than the packets themselves: declined unless
            # the bench-only permessage_deflate asks for it.
            compression="deflate" if s.permessage_deflate else None,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            close_timeout=s.close_timeout,
            max_size=_MAX_SIZE,
            write_limit=1 << 20,  # room for whole batches before drain() waits
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        for conn in list(self._connections.values()):
            if conn.state is ConnState.SILENCED:
                conn.resume()  # so the going-away handshake can complete
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._tasks.stop()

    # --- registry -----------------------------------------------------------------

    def connections(self) -> list[FeedConnection]:
        return list(self._connections.values())

    def get(self, conn_id: int) -> FeedConnection | None:
        return self._connections.get(conn_id)

    def _unregister(self, conn: FeedConnection) -> None:
        if self._connections.pop(conn.id, None) is not None:
            peers = self._by_client.get(conn.client_id, [])
            if conn in peers:
                peers.remove(conn)
            if not peers:
                self._by_client.pop(conn.client_id, None)
            log.info(
                "connection closed",
                extra={"conn": conn.id, "client": mask(conn.client_id), "packets_sent": conn.packets_sent},
            )

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Runs a coroutine in the background as the task ``name`` (see Tasks)."""
        return self._tasks.spawn(coro, name)

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.handshakes += 1
        reason = check_credentials(ws.request.path, self.settings, self.expired_tokens)
        if reason is not None:
            log.info("connection refused", extra={"reason": int(reason), "remote": str(ws.remote_address)})
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode_disconnect(reason))
                self.disconnects_sent[int(reason)] += 1
                await ws.close(1000, _reason_text(reason))
            return
        conn = FeedConnection(self, ws, next(self._ids), client_id(ws.request.path), token(ws.request.path))
        peers = self._by_client.setdefault(conn.client_id, [])
        while len(peers) >= self.settings.max_connections_per_client:
            oldest = peers[0]
            self._unregister(oldest)  # before the await: the new one takes its place now
            self.spawn(oldest.disconnect(DisconnectReason.TOO_MANY_CONNECTIONS), f"feed-sim-disconnect-{oldest.id}")
        self._connections[conn.id] = conn
        self._by_client.setdefault(conn.client_id, []).append(conn)
        log.info("connection open", extra={"conn": conn.id, "client": mask(conn.client_id), "remote": conn.remote})
        await conn.serve()
