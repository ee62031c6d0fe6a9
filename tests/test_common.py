"""The shared package: migrations, config, pagination, SQL files, generated code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from services.common import codegen
from services.common.config import ConfigError, load_settings
from services.common.errors import InvalidArgument
from services.common.migrate import MigrationError, available_migrations, migrate
from services.common.pagination import (
    decode_page_token,
    encode_page_token,
    fingerprint,
    next_token,
    page_size,
)
from services.common.sqlfiles import load_queries, parse_queries
from tests.conftest import _admin

TABLES = {
    "master_versions",
    "instruments",
    "atm_cache",
    "api_keys",
    "watchlist_items",
    "subscriptions",
    "subscription_owners",
    "subscription_log",
    "job_runs",
    "schema_migrations",
}


async def test_migrations_apply_once_and_concurrent_runners_do_not_race(pg_conninfo: str) -> None:
    from psycopg.conninfo import make_conninfo

    _admin(pg_conninfo, "DROP DATABASE IF EXISTS migrate_race WITH (FORCE)")
    _admin(pg_conninfo, "CREATE DATABASE migrate_race")
    conninfo = make_conninfo(pg_conninfo, dbname="migrate_race")
    try:
        results = await asyncio.gather(*(migrate(conninfo) for _ in range(4)))
        versions = [m.version for m in available_migrations()]
        assert sorted(results, key=len)[-1] == versions and sum(len(r) for r in results) == len(versions)
        assert await migrate(conninfo) == []
        with psycopg.connect(conninfo) as conn:
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert tables >= TABLES
            conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = %s", (versions[0],))
            conn.commit()
        with pytest.raises(MigrationError, match="immutable"):
            await migrate(conninfo)
    finally:
        _admin(pg_conninfo, "DROP DATABASE IF EXISTS migrate_race WITH (FORCE)")


def test_migration_files_are_numbered_in_order() -> None:
    versions = [m.version for m in available_migrations()]
    assert versions == sorted(versions) and versions[0].startswith("0001_")
    numbers = [int(v.split("_", 1)[0]) for v in versions]
    assert numbers == list(range(1, len(numbers) + 1))


def test_generated_code_is_in_sync_with_protos() -> None:
    assert codegen.stale_files() == [], "run `make gen` and commit services/gen"


def test_config_is_checked_at_start_up() -> None:
    assert load_settings({}).effective_master_source == "generated"
    assert load_settings({"DHAN_CLIENT_ID": "1", "DHAN_ACCESS_TOKEN": "t"}).effective_master_source == "dhan"
    with pytest.raises(ConfigError, match="GRPC_PORT"):
        load_settings({"GRPC_PORT": "http"})
    with pytest.raises(ConfigError, match="AUTH_MODE"):
        load_settings({"AUTH_MODE": "none"})
    with pytest.raises(ConfigError, match="MASTER_FILE"):
        load_settings({"MASTER_SOURCE": "file"})
    with pytest.raises(ConfigError, match="DHAN_CLIENT_ID"):
        load_settings({"MASTER_SOURCE": "dhan"})
    with pytest.raises(ConfigError, match=r"0\.\.4"):
        load_settings({"SHARD_ID": "5"})
    shown = repr(load_settings({"DHAN_CLIENT_ID": "cid-4711", "DHAN_ACCESS_TOKEN": "secret-token"}))
    assert "secret-token" not in shown and "cid-4711" not in shown


def test_pagination() -> None:
    assert page_size(0, default=20, maximum=500) == 20
    assert page_size(10_000, default=20, maximum=500) == 500
    with pytest.raises(InvalidArgument, match="negative"):
        page_size(-1, default=20, maximum=500)
    key = fingerprint("NIFTY", 1)
    token = encode_page_token(40, key)
    assert decode_page_token(token, key) == 40 and decode_page_token("", key) == 0
    with pytest.raises(InvalidArgument, match="different request"):
        decode_page_token(token, fingerprint("BANKNIFTY", 1))
    with pytest.raises(InvalidArgument, match="malformed"):
        decode_page_token("%%%", key)
    assert next_token(40, 20, 60, key) == "" and decode_page_token(next_token(0, 20, 60, key), key) == 20


def test_sql_files_are_parsed_by_name(tmp_path: Path) -> None:
    queries = parse_queries("-- preamble\n-- name: one\nSELECT 1;\n\n-- name: two\nSELECT 2\n")
    assert queries == {"one": "SELECT 1", "two": "SELECT 2"}
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    assert "copy_instruments" in load_queries("services.registry")
