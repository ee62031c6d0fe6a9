"""`make run`'s development API keys: a service key the processes present to each other, and
an admin and a user token printed in the banner (for grpcurl with AUTH_MODE=api_key).

Each start revokes the keys the previous start made (by their label) and makes new ones, so
the tokens are never stored anywhere but in the running processes and the banner.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.auth import create_api_key
from services.common.db import open_pool

LABEL = "make run (development)"
# The user whose watchlist the stack seeds: the same id as the dev principal (AUTH_MODE=dev).
DEV_USER = "dev"


@dataclass(frozen=True)
class DevelopmentKeys:
    service: str
    admin: str
    user: str


async def development_keys(conninfo: str) -> DevelopmentKeys:
    pool = await open_pool(conninfo, max_size=1, name="stack-keys")
    try:
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE label = %s AND revoked_at IS NULL", (LABEL,)
            )
        return DevelopmentKeys(
            service=await create_api_key(pool, "stack", "service", LABEL),
            admin=await create_api_key(pool, "dev-admin", "admin", LABEL),
            user=await create_api_key(pool, DEV_USER, "user", LABEL),
        )
    finally:
        await pool.close()
