"""HTTP/JSON control API of the simulator, on its own port (a small HTTP/1.1 handler on
asyncio streams: aiohttp is not installed and the API is a handful of routes).

    GET  /health                           counts, disconnect packets sent by reason among them
    GET  /connections                      every open connection with its subscriptions
    GET  /connections/{id}
    POST /connections/{id|all}/drop        close the TCP connection, no close frame
    POST /connections/{id|all}/silence     no data, no pings, no pongs; stays open (and counted)
                                           until the client closes it
    POST /connections/{id|all}/resume
    POST /connections/{id|all}/disconnect  {"reason": 805}: disconnect packet, then close
    POST /connections/{id|all}/garbage     {"bytes": 64, "count": 1}: frames that are no packet
    POST /clients/{client_id}/expire-token {"token": "..."} (optional): the token (by default
                                           every token the client id's open connections use)
                                           expires: those connections get 807 and close, and
                                           it is refused with 807 from then on
    POST /underlyings/{asset}/{symbol}/move {"percent": 2.0}: the underlying's price moves by that
                                           much at once (spot, futures and options follow)

Every answer is JSON with ``Connection: close``; actions answer {"affected": [ids]}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, cast, get_args

from .catalog import Asset

if TYPE_CHECKING:
    from .simulator import Simulator, Target

log = logging.getLogger(__name__)

_MAX_HEADER = 16 * 1024
_MAX_BODY = 64 * 1024
_READ_TIMEOUT = 10.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
}
_ACTIONS = ("drop", "silence", "resume", "disconnect", "garbage")
_ASSETS: tuple[str, ...] = get_args(Asset)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlServer:
    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._client, host, port, limit=_MAX_HEADER)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, body = await asyncio.wait_for(_read_request(reader), _READ_TIMEOUT)
                status, payload = 200, self._route(method, path, body)
            except HttpError as error:
                status, payload = error.status, {"error": str(error)}
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
                status, payload = 400, {"error": f"bad HTTP request: {error!r}"}
            except Exception as error:  # the control API must not take the simulator down
                log.exception("control request failed")
                status, payload = 500, {"error": repr(error)}
            data = json.dumps(payload).encode()
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + data)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, method: str, path: str, body: dict[str, Any]) -> Any:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        sim = self._sim
        if parts == ["health"]:
            _expect(method, "GET")
            return sim.health()
        if parts == ["connections"]:
            _expect(method, "GET")
            return {"connections": [c.to_json() for c in sim.connections()]}
        if len(parts) == 2 and parts[0] == "connections":
            _expect(method, "GET")
            info = sim.connection(_conn_id(parts[1]))
            if info is None:
                raise HttpError(404, f"no open connection {parts[1]}")
            return info.to_json()
        if len(parts) == 3 and parts[0] == "connections" and parts[2] in _ACTIONS:
            _expect(method, "POST")
            target: Target = "all" if parts[1] == "all" else _conn_id(parts[1])
            action = parts[2]
            try:
                if action == "disconnect":
                    affected = sim.disconnect(target, _int(body, "reason", 805, 0, 0xFFFF))
                elif action == "garbage":
                    affected = sim.garbage(target, _int(body, "bytes", 64, 1, 65536), _int(body, "count", 1, 1, 10_000))
                else:
                    affected = getattr(sim, action)(target)
            except KeyError:
                raise HttpError(404, f"no open connection {parts[1]}") from None
            return {"affected": affected}
        if len(parts) == 3 and parts[0] == "clients" and parts[2] == "expire-token":
            _expect(method, "POST")
            token = body.get("token")
            if token is not None and (not isinstance(token, str) or not token):
                raise HttpError(400, "token must be a non-empty string when given")
            return {"affected": sim.expire_token(parts[1], token)}
        if len(parts) == 4 and parts[0] == "underlyings" and parts[3] == "move":
            _expect(method, "POST")
            return self._move(parts[1], parts[2], body)
        raise HttpError(404, f"no route {method} {path}")

    def _move(self, asset: str, symbol: str, body: dict[str, Any]) -> dict[str, Any]:
        percent = body.get("percent")
        if not isinstance(percent, int | float) or isinstance(percent, bool) or not -50 <= percent <= 50:
            raise HttpError(400, f"percent must be a number in -50..50, got {percent!r}")
        if asset not in _ASSETS:
            raise HttpError(404, f"no asset {asset!r}: one of {', '.join(_ASSETS)}")
        try:
            price = self._sim.move(cast("Asset", asset), symbol, float(percent))
        except KeyError:
            raise HttpError(404, f"the master lists no {asset} {symbol}") from None
        return {"asset": asset, "symbol": symbol, "price": price}


def _expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"use {allowed}")


def _conn_id(text: str) -> int:
    if not text.isdigit():
        raise HttpError(404, f"connection id {text!r} is not a number or 'all'")
    return int(text)


def _int(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise HttpError(400, f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, Any]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, path, _version = lines[0].split(" ", 2)
    except ValueError:
        raise HttpError(400, f"bad request line {lines[0]!r}") from None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length > _MAX_BODY:
        raise HttpError(413, "body too large")
    body: dict[str, Any] = {}
    if length:
        raw = await reader.readexactly(length)
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise HttpError(400, "body is not JSON") from None
        if not isinstance(parsed, dict):
            raise HttpError(400, "body must be a JSON object")
        body = parsed
    return method.upper(), path, body
