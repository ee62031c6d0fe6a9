"""Test fixtures on real parts: one embedded Postgres per session, a migrated template
database, and a fresh clone of it per test (CREATE DATABASE ... TEMPLATE is a file copy)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from psycopg.conninfo import make_conninfo

from services.common.embedded_pg import start_embedded_postgres
from services.common.migrate import migrate

TEMPLATE = "dataserver_template"
# Under pytest-timeout's limit (pyproject.toml): a hung test's tasks are dumped before it is stopped.
HUNG_SECONDS = float(os.environ.get("TEST_HUNG_SECONDS", "240"))


@pytest_asyncio.fixture(autouse=True, loop_scope="session")
async def tasks_dumped_when_hung(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test still running after HUNG_SECONDS prints every asyncio task's stack, i.e. what
    each one awaits: pytest-timeout's thread stacks show only an event loop waiting."""
    handle = asyncio.get_running_loop().call_later(HUNG_SECONDS, _dump_tasks, request.node.nodeid)
    yield
    handle.cancel()


def _dump_tasks(nodeid: str) -> None:
    print(f"{nodeid} still running after {HUNG_SECONDS:g} s; its asyncio tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


@pytest.fixture(scope="session")
def pg_conninfo(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The server's maintenance database; TEST_DATABASE_URL points at an external server."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        return external
    return start_embedded_postgres(tmp_path_factory.mktemp("postgres"), keep_data=False)


def _admin(conninfo: str, statement: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(statement)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def template_conninfo(pg_conninfo: str) -> str:
    _admin(pg_conninfo, f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
    _admin(pg_conninfo, f"CREATE DATABASE {TEMPLATE}")
    conninfo = make_conninfo(pg_conninfo, dbname=TEMPLATE)
    await migrate(conninfo)
    return conninfo


def clone_database(pg_conninfo: str) -> tuple[str, str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    _admin(pg_conninfo, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY")
    return name, make_conninfo(pg_conninfo, dbname=name)


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(pg_conninfo: str, template_conninfo: str) -> AsyncIterator[str]:
    """A migrated database of this test's own."""
    name, conninfo = clone_database(pg_conninfo)
    yield conninfo
    _admin(pg_conninfo, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def masters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated masters are cached here for the whole session."""
    return tmp_path_factory.mktemp("masters")
