"""List pagination shared by every service (AIP-158): sizes and opaque page tokens.

A token carries the offset and a fingerprint of the request it belongs to, so a token
reused with a different query is refused instead of silently paging something else.
"""

from __future__ import annotations

import base64
import hashlib
import json

from services.common.errors import InvalidArgument


def page_size(requested: int, *, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument(f"page_size must not be negative (got {requested}); use 0 for the default of {default}")
    if requested == 0:
        return default
    return min(requested, maximum)


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def encode_page_token(offset: int, request_fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "f": request_fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, request_fingerprint: str) -> int:
    if not token:
        return 0
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        offset = int(data["o"])
        matches = data["f"] == request_fingerprint
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is malformed: pass the next_page_token of a previous response") from None
    if not matches or offset < 0:
        raise InvalidArgument(
            "page_token belongs to a different request: keep the query and filters unchanged while paging"
        )
    return offset


def next_token(offset: int, returned: int, total: int, request_fingerprint: str) -> str:
    end = offset + returned
    return encode_page_token(end, request_fingerprint) if end < total else ""
