"""Broker accounts' access tokens as rotated here: the one owner of credentials.sql.

The database holds each account's current token and its version (0, with no row, means the
configuration's token). RotateAccessToken writes it; the shards learn the version from their
health reports and read the token with GetAccountCredentials. The token never leaves through
a log line, an error or a status: those name the account and the version only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.db import Pool
from services.common.errors import InvalidArgument, NotFound
from services.subscription import sql

log = logging.getLogger(__name__)

QUERIES = sql.load("credentials.sql")
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class TokenVersion:
    """An account's token version; `rotated_at` is None while it was never rotated here."""

    account_id: str
    version: int = 0
    rotated_at: datetime | None = None


@dataclass(frozen=True)
class AccountToken:
    account_id: str
    token: str = field(repr=False)
    version: int
    rotated_at: datetime


class Credentials:
    """Tokens of the configured accounts (`account_ids`, in shard order) on the service's pool."""

    def __init__(self, pool: Pool, account_ids: Sequence[str]) -> None:
        self._pool = pool
        self.account_ids = tuple(account_ids)

    def check_account(self, account_id: str) -> None:
        if account_id not in self.account_ids:
            # Account names are not secrets: saying which are accepted helps the operator.
            raise InvalidArgument(
                f"account_id {account_id!r} is not a configured account: accepted {', '.join(self.account_ids)}"
            )

    async def rotate(self, account_id: str, token: str, actor: str) -> TokenVersion:
        """Makes `token` the account's current one; the version moves only when it is new."""
        self.check_account(account_id)
        token = token.strip()
        if not token:
            raise InvalidArgument("access_token is required: the account's new access token, non-empty")
        if len(token) > MAX_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise InvalidArgument(f"access_token must be one word of at most {MAX_TOKEN_LENGTH} characters")
        params = {"account_id": account_id, "token": token, "actor": actor}
        async with self._pool.connection() as conn, conn.transaction():
            row = await sql.row(conn, QUERIES["rotate"], params)
            if row is not None:
                log.warning(
                    "account access token rotated",
                    extra={"account": account_id, "credentials_version": row["version"], "actor": actor},
                )
                return TokenVersion(account_id, row["version"], row["rotated_at"])
            current = await sql.row(conn, QUERIES["current"], params)
        assert current is not None  # the upsert found the row with this very token
        log.info(
            "account access token already current",
            extra={"account": account_id, "credentials_version": current["version"], "actor": actor},
        )
        return TokenVersion(account_id, current["version"], current["rotated_at"])

    async def current(self, account_id: str) -> AccountToken:
        """The account's rotated token; NotFound when it was never rotated here."""
        self.check_account(account_id)
        async with self._pool.connection() as conn:
            row = await sql.row(conn, QUERIES["current"], {"account_id": account_id})
        if row is None:
            raise NotFound(f"account {account_id}'s token was never rotated here: its configuration's token is current")
        return AccountToken(account_id, row["access_token"], row["version"], row["rotated_at"])

    async def version(self, account_id: str) -> int:
        """The account's current version (0: never rotated), for shard health responses."""
        async with self._pool.connection() as conn:
            row = await sql.row(conn, QUERIES["version"], {"account_id": account_id})
        return row["version"] if row is not None else 0

    async def versions(self) -> dict[str, TokenVersion]:
        """Every configured account's version, for status (AccountUsage.credentials_version/rotated_at)."""
        async with self._pool.connection() as conn:
            rows = await sql.rows(conn, QUERIES["versions"])
        found = {r["account_id"]: TokenVersion(r["account_id"], r["version"], r["rotated_at"]) for r in rows}
        return {a: found.get(a, TokenVersion(a)) for a in self.account_ids}


def fill_account_versions(status: pb.GetSubscriptionStatusResponse, versions: dict[str, TokenVersion]) -> None:
    """Sets each account row's credentials_version and rotated_at (never the token)."""
    for usage in status.accounts:
        current = versions.get(usage.account_id)
        if current is None:
            continue
        usage.credentials_version = current.version
        if current.rotated_at is not None:
            usage.rotated_at.FromDatetime(current.rotated_at)
