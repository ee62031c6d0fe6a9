"""Whether a shard's instruments are live, as terminals see it, and the events that say so.

A shard link is down while the gateway's stream from the shard is lost (SHARD_UNREACHABLE)
or while the shard reports its broker connection interrupted (its status's
interruption_cause). One outage is announced once (INTERRUPTED) and ended once (RESTORED);
within it a cause that gets worse (reconnecting, then kicked, unreachable or stopped) is
announced again, one that eases (a kicked shard's retry failing, say) only updates what
snapshots say. The bookkeeping is per link, never per packet: an instrument's staleness is
its shard's outage.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2

from services.common.keys import wire_key_proto

if TYPE_CHECKING:
    from services.feed.gateway.hub import Hub, Instrument, Subscriber

# How bad a cause is: a new INTERRUPTED goes out within an outage only when its cause gets worse.
_SEVERITY = {
    feed_pb2.UPSTREAM_CAUSE_RECONNECTING: 1,
    feed_pb2.UPSTREAM_CAUSE_SILENT: 1,
    feed_pb2.UPSTREAM_CAUSE_KICKED: 2,
    feed_pb2.UPSTREAM_CAUSE_SHARD_UNREACHABLE: 3,
    feed_pb2.UPSTREAM_CAUSE_STOPPED: 4,
}


@dataclass(frozen=True)
class Outage:
    """Why a link's instruments are stale, and since when."""

    cause: feed_pb2.UpstreamCause
    reason: str  # for people
    code: int  # the broker's disconnect code, 0 when it sent none
    since: float  # epoch seconds

    def worse_than(self, other: Outage) -> bool:
        return _SEVERITY.get(self.cause, 0) > _SEVERITY.get(other.cause, 0)

    def mark(self, state: feed_pb2.InstrumentState) -> None:
        """Marks an instrument's state stale with this outage's cause, reason and start."""
        state.stale = True
        state.stale_cause = self.cause
        state.stale_reason = self.reason
        state.stale_since.FromNanoseconds(int(self.since * 1e9))


def unreachable(shard_id: int, detail: str, since: float) -> Outage:
    return Outage(feed_pb2.UPSTREAM_CAUSE_SHARD_UNREACHABLE, f"shard {shard_id} unreachable ({detail})", 0, since)


def reported(status: feed_pb2.ShardStatus) -> Outage | None:
    """The outage a shard's status reports, or None when its instruments are live."""
    cause = status.interruption_cause
    if not cause:
        return None
    code, last = status.last_disconnect_code, status.last_disconnect_reason
    if cause == feed_pb2.UPSTREAM_CAUSE_KICKED:
        reason = f"broker disconnect {code}: {last}; the shard backs off before reconnecting"
    elif cause == feed_pb2.UPSTREAM_CAUSE_STOPPED:
        reason = f"broker disconnect {code}: {last}; the shard does not retry until its credentials are fixed"
    elif cause == feed_pb2.UPSTREAM_CAUSE_SILENT:
        reason = f"broker connection {last}; reconnecting"
    elif last:
        reason = f"broker connection lost ({last}); reconnecting"
    else:
        reason = "shard starting; connecting to the broker"
    since = status.interrupted_at.ToNanoseconds() / 1e9 if status.HasField("interrupted_at") else time.time()
    return Outage(cause, reason, code, since)


def announce(
    shard_id: int,
    instruments: Iterable[Instrument],
    state: feed_pb2.UpstreamState,
    outage: Outage,
    *,
    cause: feed_pb2.UpstreamCause,
    reason: str,
    restarted: bool = False,
) -> None:
    """Tells each stream following some of `instruments` once, naming its own."""
    followed: dict[Subscriber, list[Instrument]] = {}
    for instrument in instruments:
        for subscriber in instrument.subscribers:
            followed.setdefault(subscriber, []).append(instrument)
    for subscriber, own in followed.items():
        event = feed_pb2.UpstreamStatusChange(
            shard_id=shard_id,
            state=state,
            affected_instruments=len(own),
            shard_restarted=restarted,
            reason=reason,
            instruments=[i.key_proto for i in own],
            cause=cause,
            disconnect_code=outage.code,
        )
        event.interrupted_at.FromNanoseconds(int(outage.since * 1e9))
        subscriber.upstream_changed(event)


def interrupted(shard_id: int, instruments: Iterable[Instrument], outage: Outage) -> None:
    announce(
        shard_id, instruments, feed_pb2.UPSTREAM_STATE_INTERRUPTED, outage, cause=outage.cause, reason=outage.reason
    )


def instrument_state(hub: Hub, key: int, mode: int) -> feed_pb2.InstrumentState:
    """How an instrument stands at the gateway for a stream in `mode`: subscribed upstream,
    with its stale marks while its shard is down, or not subscribed."""
    instrument = hub.instruments.get(key)
    state = feed_pb2.InstrumentState(key=instrument.key_proto if instrument is not None else wire_key_proto(key))
    if instrument is None or not instrument.mode:
        state.status = feed_pb2.INSTRUMENT_STATUS_NOT_SUBSCRIBED_UPSTREAM
        state.message = "not subscribed at the broker (never added, unsubscribed or evicted); ticks flow once it is"
        return state
    state.status = feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED
    state.mode = cast(common_pb2.FeedMode, mode or common_pb2.FEED_MODE_FULL)
    state.awaiting_first_tick = instrument.latest is None
    outage = hub.outage(key)
    if outage is not None:
        outage.mark(state)
    return state
