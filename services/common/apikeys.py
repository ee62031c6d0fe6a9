"""Manage API keys (an operator's command; it reads DATABASE_URL like the services).

    python -m services.common.apikeys create --user alice [--role user|admin|service]
                                             [--label laptop] [--expires 30d | 2026-12-31]
    python -m services.common.apikeys list [--all]
    python -m services.common.apikeys revoke (--id 3f9a1c2b7d4e | --user alice)

`create` prints the token once; only its SHA-256 is stored. `list` never shows tokens: a key
is named by its id, the first 12 hex digits of that hash. An expired or revoked key is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from datetime import UTC, datetime, timedelta

from services.common.auth import ROLES, create_api_key
from services.common.config import load_settings
from services.common.db import Pool, open_pool, resolve_database_url
from services.common.migrate import migrate

ID_LENGTH = 12
_DURATION = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_expiry(text: str, now: datetime) -> datetime:
    """ "30d", "12h", "90m" from `now`, or a date (end of that day, UTC) or ISO timestamp."""
    match = _DURATION.match(text.strip())
    if match:
        return now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--expires {text!r}: expected 30d, 12h, 90m or an ISO date") from None
    if len(text.strip()) == 10:  # a bare date: valid through that day
        parsed = parsed.replace(hour=23, minute=59, second=59)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def list_keys(pool: Pool, include_inactive: bool) -> list[str]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT key_hash, user_id, role, label, created_at, revoked_at, expires_at FROM api_keys "
            "ORDER BY created_at"
        )
        rows = await cursor.fetchall()
    now = datetime.now(UTC)
    lines = []
    for row in rows:
        expires = row["expires_at"]
        state = "revoked" if row["revoked_at"] else "expired" if expires and expires <= now else "active"
        if state != "active" and not include_inactive:
            continue
        until = f"{expires:%Y-%m-%d %H:%M}" if expires else "never"
        lines.append(
            f"{row['key_hash'][:ID_LENGTH]}  {row['user_id']:<20} {row['role']:<8} {state:<8} "
            f"created {row['created_at']:%Y-%m-%d %H:%M}  expires {until}  {row['label']}"
        )
    return lines


async def revoke(pool: Pool, key_id: str | None, user: str | None) -> int:
    """Revokes the active keys of an id (a hash prefix) or of a user; returns how many."""
    async with pool.connection() as conn:
        if key_id:
            cursor = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE key_hash LIKE %s AND revoked_at IS NULL",
                (key_id.lower() + "%",),
            )
        else:
            cursor = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL", (user,)
            )
        return cursor.rowcount


async def run(args: argparse.Namespace) -> None:
    conninfo = resolve_database_url(load_settings())
    await migrate(conninfo)
    pool = await open_pool(conninfo, max_size=1, name="apikeys")
    try:
        if args.command == "create":
            print(await create_api_key(pool, args.user, args.role, args.label, args.expires))
        elif args.command == "revoke":
            count = await revoke(pool, args.id, args.user)
            print(f"revoked {count} key(s) of {args.id or args.user} (servers may accept them up to 30 s longer)")
        else:
            for line in await list_keys(pool, args.all):
                print(line)
    finally:
        await pool.close()


def _key_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{8,64}", text):
        raise argparse.ArgumentTypeError(f"--id {text!r}: expected a key id from `list` (8 or more hex digits)")
    return text


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m services.common.apikeys", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print its token (once)")
    create.add_argument("--user", required=True)
    create.add_argument("--role", choices=ROLES, default="user")
    create.add_argument("--label", default="")
    create.add_argument(
        "--expires", type=lambda text: parse_expiry(text, datetime.now(UTC)), default=None, help="30d, 12h or a date"
    )
    listing = commands.add_parser("list", help="list active keys by id (never their tokens)")
    listing.add_argument("--all", action="store_true", help="include revoked and expired keys")
    revoking = commands.add_parser("revoke", help="revoke a key by id, or every key of a user")
    target = revoking.add_mutually_exclusive_group(required=True)
    target.add_argument("--id", type=_key_id)
    target.add_argument("--user")
    return root


def main() -> None:
    asyncio.run(run(parser().parse_args()))


if __name__ == "__main__":
    main()
