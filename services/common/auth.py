"""Who is calling: a bearer token in metadata, resolved through the api_keys table.

The identity always comes from credentials, never from a request field. In "dev" mode
(local runs) a call without a token acts as the development admin, so grpcurl works bare.
"""

from __future__ import annotations

import contextvars
import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.db import Pool
from services.common.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: str  # "user" or "admin"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


DEV_PRINCIPAL = Principal(user_id="dev", role="admin")

principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "dsk_" + secrets.token_urlsafe(24)


class Authenticator:
    """Resolves tokens, caching answers briefly so the database is not asked on every call."""

    def __init__(self, mode: str, pool: Pool | None, *, cache_seconds: float = 30.0) -> None:
        if mode == "api_key" and pool is None:
            raise ValueError("api_key authentication needs a database pool")
        self._mode = mode
        self._pool = pool
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, metadata: Mapping[str, str | bytes]) -> Principal:
        header = metadata.get("authorization")
        if isinstance(header, bytes):
            header = header.decode(errors="replace")
        if not header:
            if self._mode == "dev":
                return DEV_PRINCIPAL
            raise Unauthenticated("missing credentials: send metadata 'authorization: Bearer <api key>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed authorization metadata: expected 'Bearer <api key>'")
        principal = await self._lookup(token.strip())
        if principal is None:
            raise Unauthenticated("invalid or revoked API key")
        return principal

    async def _lookup(self, token: str) -> Principal | None:
        key_hash = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._pool is None:
            return None
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT user_id, role FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (key_hash,)
            )
            row = await cursor.fetchone()
        principal = Principal(row["user_id"], row["role"]) if row else None
        self._cache[key_hash] = (now + self._cache_seconds, principal)
        return principal


def current_principal() -> Principal:
    principal = principal_var.get()
    if principal is None:  # only reachable for handlers called outside the interceptor
        raise Unauthenticated("no authenticated caller")
    return principal


def require_admin(action: str) -> Principal:
    principal = current_principal()
    if not principal.is_admin:
        raise PermissionDenied(
            f"{action} needs the admin role; caller {principal.user_id!r} has role {principal.role!r}"
        )
    return principal


def acting_user(requested_user_id: str) -> str:
    """The user an action applies to: the caller, or a named user when the caller is admin."""
    principal = current_principal()
    if not requested_user_id or requested_user_id == principal.user_id:
        return principal.user_id
    if not principal.is_admin:
        raise PermissionDenied(
            f"user {principal.user_id!r} may not act for {requested_user_id!r}; only admins may set user_id"
        )
    return requested_user_id


async def create_api_key(pool: Pool, user_id: str, role: str, label: str = "") -> str:
    """Stores a new key and returns the token, which is shown once and never stored."""
    token = new_token()
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO api_keys (key_hash, user_id, role, label) VALUES (%s, %s, %s, %s)",
            (hash_token(token), user_id, role, label),
        )
    return token
