"""SQL kept in .sql files and looked up by name, as procrastinate does.

A file holds blocks that each start with a `-- name: <query_name>` line; the block's text up
to the next marker is the query.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString

_MARKER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    parts = _MARKER.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, LiteralString]:
    """The named queries of a package's .sql file, typed as the literals they are: the text
    ships with the code and is never built from input."""
    return parse_queries(resources.files(package).joinpath(filename).read_text())
