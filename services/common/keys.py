"""Instrument keys in their three forms, and the one place that converts between them.

- `Key`: (Dhan segment name, security id), as stored in Postgres and used by services;
- `common_pb2.InstrumentKey`: the contracts' form;
- a wire key: one int, segment byte | security id << 8, equal to bytes 3..7 of a Dhan feed
  packet read little-endian, so the feed's hot paths look instruments up without parsing.
"""

from __future__ import annotations

from dataserver.common.v1 import common_pb2

from services.common.errors import InvalidArgument
from services.common.instruments import (
    PROTO_TO_SEGMENT,
    SEGMENT_NAMES_ACCEPTED,
    SEGMENT_TO_PROTO,
    SEGMENT_WIRE_CODES,
    SEGMENTS_BY_WIRE_CODE,
)

Key = tuple[str, int]  # (Dhan segment name, security id)


def key_proto(key: Key) -> common_pb2.InstrumentKey:
    return common_pb2.InstrumentKey(exchange_segment=SEGMENT_TO_PROTO[key[0]], security_id=key[1])


def key_from_proto(proto: common_pb2.InstrumentKey, field: str = "key") -> Key:
    """The key of a request's InstrumentKey; INVALID_ARGUMENT naming `field` when it is unset."""
    segment = PROTO_TO_SEGMENT.get(proto.exchange_segment)
    if segment is None:
        raise InvalidArgument(f"{field}.exchange_segment is required; accepted: {SEGMENT_NAMES_ACCEPTED}")
    if proto.security_id == 0:
        raise InvalidArgument(f"{field}.security_id is required (a positive Dhan security id)")
    return (segment, proto.security_id)


def instrument_key(segment_code: int, security_id: int) -> int:
    """The wire key of a segment byte and a security id."""
    return segment_code | (security_id << 8)


def wire_key(segment: str, security_id: int) -> int:
    """The wire key of a Dhan segment name and a security id."""
    return instrument_key(SEGMENT_WIRE_CODES[segment], security_id)


def proto_wire_key(proto: common_pb2.InstrumentKey) -> int:
    """The wire key of an InstrumentKey whose segment is known to be set (internal streams)."""
    return wire_key(PROTO_TO_SEGMENT[proto.exchange_segment], proto.security_id)


def checked_wire_key(proto: common_pb2.InstrumentKey, field: str = "key") -> int:
    """The wire key of a request's InstrumentKey, validated as `key_from_proto` does."""
    return wire_key(*key_from_proto(proto, field))


def key_of_wire(wire: int) -> Key:
    return (SEGMENTS_BY_WIRE_CODE[wire & 0xFF], wire >> 8)


def wire_key_proto(wire: int) -> common_pb2.InstrumentKey:
    return key_proto(key_of_wire(wire))
