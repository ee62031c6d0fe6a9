"""The JSON requests a client sends on the live feed: building subscribe and unsubscribe
messages (the shards' side) and parsing and validating them (the simulator's side)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import index as _as_int

from services.common.instruments import SEGMENT_WIRE_CODES
from services.dhan.protocol import FEED_REQUEST_CODES, MAX_INSTRUMENTS_PER_MESSAGE, FeedMode, RequestCode

__all__ = [
    "Request",
    "RequestError",
    "build_disconnect",
    "build_subscribe_messages",
    "build_unsubscribe_messages",
    "parse_request",
]

_UINT32_MAX = 0xFFFF_FFFF


class RequestError(ValueError):
    """A client request the server refuses (bad JSON or shape)."""


@dataclass(slots=True)
class Request:
    code: RequestCode
    instruments: list[tuple[str, int]] = field(default_factory=list)  # (segment name, security id)


def _instrument_entries(instruments: Iterable[tuple[str, int]]) -> list[dict[str, str]]:
    entries = []
    for segment, security_id in instruments:
        if segment not in SEGMENT_WIRE_CODES:
            raise ValueError(f"unknown exchange segment {segment!r}; known: {', '.join(SEGMENT_WIRE_CODES)}")
        sid = _as_int(security_id)
        if isinstance(security_id, bool) or not 0 <= sid <= _UINT32_MAX:
            raise ValueError(f"security id {security_id!r} is not a uint32")
        entries.append({"ExchangeSegment": segment, "SecurityId": str(sid)})
    return entries


def _build(code: int, instruments: Iterable[tuple[str, int]]) -> list[str]:
    entries = _instrument_entries(instruments)
    step = MAX_INSTRUMENTS_PER_MESSAGE
    return [
        json.dumps({"RequestCode": code, "InstrumentCount": len(chunk), "InstrumentList": chunk}, separators=(",", ":"))
        for chunk in (entries[i : i + step] for i in range(0, len(entries), step))
    ]


def build_subscribe_messages(instruments: Iterable[tuple[str, int]], mode: FeedMode) -> list[str]:
    """JSON text frames subscribing ``(segment name, security id)`` pairs in ``mode``, at most
    100 per message, in the given order (no de-duplication). No instruments: no messages."""
    return _build(FeedMode(mode).subscribe_code, instruments)


def build_unsubscribe_messages(instruments: Iterable[tuple[str, int]], mode: FeedMode) -> list[str]:
    """Like build_subscribe_messages with the mode's unsubscribe code."""
    return _build(FeedMode(mode).unsubscribe_code, instruments)


def build_disconnect() -> str:
    return json.dumps({"RequestCode": int(RequestCode.DISCONNECT)})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(text: str | bytes, allowed: Iterable[int] = FEED_REQUEST_CODES) -> Request:
    """Parses and validates a client request; raises RequestError saying what is wrong.
    ``allowed``: the request codes the endpoint accepts (default: the live feed's)."""
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise RequestError(f"request must be a JSON object, got {type(message).__name__}")
    if "RequestCode" not in message:
        raise RequestError("request has no RequestCode")
    raw_code = message["RequestCode"]
    if not _is_int(raw_code):
        raise RequestError(f"RequestCode must be an integer, got {raw_code!r}")
    allowed_codes = frozenset(int(c) for c in allowed)
    if raw_code not in allowed_codes:
        raise RequestError(f"RequestCode {raw_code} is not accepted here (accepted: {sorted(allowed_codes)})")
    try:
        code = RequestCode(raw_code)
    except ValueError:
        raise RequestError(f"unknown RequestCode {raw_code}") from None
    if code is RequestCode.DISCONNECT:
        return Request(code, [])
    if code is RequestCode.CONNECT:
        raise RequestError("RequestCode 11 (v1 connect) has no JSON form; v2 authenticates in the URL")

    for key in ("InstrumentCount", "InstrumentList"):
        if key not in message:
            raise RequestError(f"RequestCode {raw_code} needs {key}")
    count = message["InstrumentCount"]
    entries = message["InstrumentList"]
    if not _is_int(count):
        raise RequestError(f"InstrumentCount must be an integer, got {count!r}")
    if not isinstance(entries, list):
        raise RequestError(f"InstrumentList must be a list, got {type(entries).__name__}")
    if not entries:
        raise RequestError("InstrumentList is empty")
    if len(entries) > MAX_INSTRUMENTS_PER_MESSAGE:
        raise RequestError(
            f"InstrumentList has {len(entries)} instruments; at most {MAX_INSTRUMENTS_PER_MESSAGE} per message"
        )
    if count != len(entries):
        raise RequestError(f"InstrumentCount {count} does not match the {len(entries)} entries of InstrumentList")

    instruments: list[tuple[str, int]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RequestError(f"InstrumentList[{i}] must be an object, got {type(entry).__name__}")
        segment = entry.get("ExchangeSegment")
        security_id = entry.get("SecurityId")
        if segment is None or security_id is None:
            raise RequestError(f"InstrumentList[{i}] needs ExchangeSegment and SecurityId")
        if not isinstance(segment, str) or segment not in SEGMENT_WIRE_CODES:
            raise RequestError(f"InstrumentList[{i}]: unknown ExchangeSegment {segment!r}")
        if not isinstance(security_id, str):
            raise RequestError(f"InstrumentList[{i}]: SecurityId must be a JSON string, got {security_id!r}")
        if not (security_id.isascii() and security_id.isdigit()) or int(security_id) > _UINT32_MAX:
            raise RequestError(f"InstrumentList[{i}]: SecurityId {security_id!r} is not a decimal uint32")
        instruments.append((segment, int(security_id)))
    return Request(code, instruments)
