"""Dhan's URL authentication, as the simulator checks it on every WebSocket handshake."""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import parse_qs, urlsplit

from services.dhan.protocol import DisconnectReason

from .settings import SimulatorSettings


def check_credentials(path: str, settings: SimulatorSettings, expired: Collection[str] = ()) -> int | None:
    """The disconnect reason for a request path, or None when it may connect; `expired`: tokens
    expired while running (the control API's expire-token), refused with 807 like
    ``expired_tokens``."""
    url = urlsplit(path)
    query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    if url.path not in ("", "/") or query.get("version") != "2":
        return DisconnectReason.INVALID_REQUEST
    token = query.get("token", "")
    if not token:
        return DisconnectReason.AUTHENTICATION_FAILED
    if token in settings.expired_tokens or token in expired:
        return DisconnectReason.ACCESS_TOKEN_EXPIRED
    if settings.valid_tokens is not None and token not in settings.valid_tokens:
        return DisconnectReason.ACCESS_TOKEN_INVALID
    client_id = query.get("clientId", "")
    if not client_id or (settings.valid_client_ids is not None and client_id not in settings.valid_client_ids):
        return DisconnectReason.CLIENT_ID_INVALID
    if query.get("authType") != "2":
        return DisconnectReason.AUTHENTICATION_FAILED
    return None


def client_id(path: str) -> str:
    """The clientId of a request path (empty when absent)."""
    values = parse_qs(urlsplit(path).query).get("clientId", [""])
    return values[-1]


def token(path: str) -> str:
    """The token of a request path (empty when absent)."""
    values = parse_qs(urlsplit(path).query).get("token", [""])
    return values[-1]


def mask(credential: str) -> str:
    """What the simulator's logs show of a client id or token: its last two characters (the
    stack's logs are checked for credentials, the simulator's too)."""
    return "…" + credential[-2:] if len(credential) > 4 else "…"
