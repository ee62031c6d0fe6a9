"""datetime and epoch seconds to protobuf Timestamps, in one place."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime | None) -> Timestamp | None:
    """None stays None, so an unset optional field stays unset."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def timestamp_from_epoch(seconds: float | None) -> Timestamp | None:
    """None or 0 (never happened) gives None."""
    if not seconds:
        return None
    return timestamp(datetime.fromtimestamp(seconds, tz=UTC))


def timestamp_now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
