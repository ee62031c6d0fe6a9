"""Manage API keys.

    python -m services.common.apikeys create --user alice [--role user|admin] [--label laptop]
    python -m services.common.apikeys revoke --user alice
    python -m services.common.apikeys list

The token is printed once; only its SHA-256 is stored.
"""

from __future__ import annotations

import argparse
import asyncio

from services.common.auth import create_api_key
from services.common.config import load_settings
from services.common.db import open_pool, resolve_database_url
from services.common.migrate import migrate


async def run(args: argparse.Namespace) -> None:
    conninfo = resolve_database_url(load_settings())
    await migrate(conninfo)
    pool = await open_pool(conninfo, max_size=1, name="apikeys")
    try:
        if args.command == "create":
            print(await create_api_key(pool, args.user, args.role, args.label))
        elif args.command == "revoke":
            async with pool.connection() as conn:
                cursor = await conn.execute(
                    "UPDATE api_keys SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL", (args.user,)
                )
                print(f"revoked {cursor.rowcount} key(s) of {args.user}")
        else:
            async with pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT user_id, role, label, created_at, revoked_at FROM api_keys ORDER BY created_at"
                )
                for row in await cursor.fetchall():
                    state = "revoked" if row["revoked_at"] else "active"
                    created = f"{row['created_at']:%Y-%m-%d %H:%M}"
                    print(f"{row['user_id']:<20} {row['role']:<6} {state:<8} {created} {row['label']}")
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.common.apikeys", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create")
    create.add_argument("--user", required=True)
    create.add_argument("--role", choices=("user", "admin"), default="user")
    create.add_argument("--label", default="")
    revoke = commands.add_parser("revoke")
    revoke.add_argument("--user", required=True)
    commands.add_parser("list")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
