"""Why, and since when, a shard's instruments are not live: the interruption the shard
reports in its status (interruption_cause, interrupted_at), from which the gateway marks
them stale for terminals.

An interruption begins when the shard starts (nothing is subscribed yet) or its connection
drops, lasts across reconnect attempts that fail (its start is kept, its cause follows the
latest failure), and ends only once a connection is up and resubscribed.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataserver.feed.v1 import feed_pb2

from services.common.timestamps import timestamp_from_epoch

FATAL_REASONS = {
    806: "data APIs not subscribed",
    807: "access token expired",
    808: "authentication failed",
    809: "access token invalid",
    810: "client id invalid",
}
KICKED = 805
REASON_TEXT = {
    800: "internal server error",
    804: "instruments exceed limit",
    805: "too many connections",
    **FATAL_REASONS,
}


@dataclass(frozen=True)
class Interruption:
    cause: feed_pb2.UpstreamCause
    since: float  # epoch seconds


def disconnect_cause(code: int, silent: bool) -> feed_pb2.UpstreamCause:
    """The cause of a connection that ended (or failed to open) with disconnect code `code`
    (0 when none came); `silent` when the watchdog closed it."""
    if code == KICKED:
        return feed_pb2.UPSTREAM_CAUSE_KICKED
    if code in FATAL_REASONS:
        return feed_pb2.UPSTREAM_CAUSE_STOPPED
    if silent:
        return feed_pb2.UPSTREAM_CAUSE_SILENT
    return feed_pb2.UPSTREAM_CAUSE_RECONNECTING


class ConnectionInterruption:
    """The current interruption of one shard's connection, or None while it is live."""

    def __init__(self, started_at: float) -> None:
        self.current: Interruption | None = Interruption(feed_pb2.UPSTREAM_CAUSE_RECONNECTING, started_at)

    def down(self, cause: feed_pb2.UpstreamCause, now: float) -> None:
        since = self.current.since if self.current is not None else now
        self.current = Interruption(cause, since)

    def up(self) -> bool:
        """Ends the interruption; whether there was one."""
        was = self.current is not None
        self.current = None
        return was

    def fill(self, status: feed_pb2.ShardStatus) -> None:
        current = self.current
        if current is not None:
            status.interruption_cause = current.cause
            interrupted_at = timestamp_from_epoch(current.since)
            if interrupted_at is not None:
                status.interrupted_at.CopyFrom(interrupted_at)
