"""Running this package's named SQL: typed rows, and queries typed as the literals they are."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, LiteralString

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from services.common.keys import Key
from services.common.sqlfiles import load_queries

Row = dict[str, Any]
Params = Mapping[str, Any] | None


def load(filename: str) -> dict[str, LiteralString]:
    """The named queries of one of this package's .sql files."""
    return load_queries("services.subscription", filename)


def key_columns(keys: Iterable[Key]) -> dict[str, list[Any]]:
    """Keys as the two arrays the queries unnest."""
    keys = list(keys)
    return {"segments": [k[0] for k in keys], "ids": [k[1] for k in keys]}


async def rows(conn: AsyncConnection[Any], query: LiteralString, params: Params = None) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchall()


async def row(conn: AsyncConnection[Any], query: LiteralString, params: Params = None) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()


async def run(conn: AsyncConnection[Any], query: LiteralString, params: Params = None) -> int:
    """Executes a statement; returns how many rows it changed."""
    async with conn.cursor() as cursor:
        await cursor.execute(query, params)
        return cursor.rowcount
