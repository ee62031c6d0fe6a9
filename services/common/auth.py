"""Who is calling: a bearer token in metadata, resolved through the api_keys table.

The identity always comes from credentials, never from a request field. In "dev" mode
(local runs) a call without a token acts as the development admin, so grpcurl works bare.

Roles: "user" (a terminal: its own watchlists and streams), "admin" (an operator) and
"service" (another of our services: the gateway, the shards, the scheduler). Admin and
service are both privileged: they may call the internal RPCs (services/common/access.py)
and act for any user. A key may expire (`expires_at`); an expired or revoked key is refused.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.db import Pool
from services.common.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: str  # one of ROLES

    @property
    def privileged(self) -> bool:
        """An admin or a service: internal RPCs, and acting for any user."""
        return self.role in PRIVILEGED_ROLES


ROLES = ("user", "admin", "service")
PRIVILEGED_ROLES = frozenset({"admin", "service"})

DEV_PRINCIPAL = Principal(user_id="dev", role="admin")

principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "dsk_" + secrets.token_urlsafe(24)


class Authenticator:
    """Resolves tokens, caching answers briefly so the database is not asked on every call
    (a revoked key is refused within `cache_seconds`; an expired one at once).

    A server without a database (a feed shard) passes no pool: it accepts only its own
    `service_token`, the key every service of a deployment presents, as the service role."""

    def __init__(
        self,
        mode: str,
        pool: Pool | None,
        *,
        cache_seconds: float = 30.0,
        service_token: str | None = None,
    ) -> None:
        if mode == "api_key" and pool is None and not service_token:
            raise ValueError("api_key authentication needs a database pool or a service token")
        self._mode = mode
        self._pool = pool
        self._service_hash = hash_token(service_token) if service_token else None
        self._cache_seconds = cache_seconds
        # key hash -> (cache deadline (monotonic), principal, expiry (wall clock) or None)
        self._cache: dict[str, tuple[float, Principal | None, datetime | None]] = {}

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
            raise Unauthenticated("invalid, expired or revoked API key")
        return principal

    async def _lookup(self, token: str) -> Principal | None:
        key_hash = hash_token(token)
        if self._pool is None:
            if self._service_hash is not None and hmac.compare_digest(key_hash, self._service_hash):
                return SERVICE_PRINCIPAL
            return None
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is None or cached[0] <= now:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT user_id, role, expires_at FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
                    (key_hash,),
                )
                row = await cursor.fetchone()
            found = Principal(row["user_id"], row["role"]) if row else None
            cached = (now + self._cache_seconds, found, row["expires_at"] if row else None)
            self._cache[key_hash] = cached
        _, principal, expires_at = cached
        if expires_at is not None and expires_at <= datetime.now(UTC):
            return None
        return principal


SERVICE_PRINCIPAL = Principal(user_id="service", role="service")


def current_principal() -> Principal:
    principal = principal_var.get()
    if principal is None:  # only reachable for handlers called outside the interceptor
        raise Unauthenticated("no authenticated caller")
    return principal


def require_privileged(action: str) -> Principal:
    """The caller, when an admin or a service; PERMISSION_DENIED for a user."""
    principal = current_principal()
    if not principal.privileged:
        raise PermissionDenied(
            f"{action} needs the admin or service role; caller {principal.user_id!r} has role {principal.role!r}"
        )
    return principal


def acting_user(requested_user_id: str) -> str:
    """The user an action applies to: the caller, or a named user when the caller is privileged."""
    principal = current_principal()
    if not requested_user_id or requested_user_id == principal.user_id:
        return principal.user_id
    if not principal.privileged:
        raise PermissionDenied(
            f"user {principal.user_id!r} may not act for {requested_user_id!r}; only admins may set user_id"
        )
    return requested_user_id


async def create_api_key(
    pool: Pool, user_id: str, role: str, label: str = "", expires_at: datetime | None = None
) -> str:
    """Stores a new key and returns the token, which is shown once and never stored."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    token = new_token()
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO api_keys (key_hash, user_id, role, label, expires_at) VALUES (%s, %s, %s, %s, %s)",
            (hash_token(token), user_id, role, label, expires_at),
        )
    return token
