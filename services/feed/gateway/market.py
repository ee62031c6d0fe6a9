"""Market state for terminals: each exchange segment's phase (pre-open, open, closed,
holiday) by the trading calendar on the gateway's market clock. GetMarketState answers it,
every tick snapshot carries it, and the watch announces each change to every open stream.

The watch is the one owner of the phases told to terminals: snapshots carry what it last
saw, and its events report each change from there, so a terminal's view never skips or
repeats a phase. It wakes at the next change the calendar gives, or every `poll_seconds` at
the most (a clock may step: NTP, the simulated clock's wrap, a test's ManualClock), and a
wake that finds nothing due costs a clock read and a comparison. It never touches the tick
path: its events go through the streams' outboxes, as upstream events do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from dataserver.feed.v1 import feed_pb2

from services.common.clock import Clock
from services.common.errors import InvalidArgument
from services.common.instruments import PROTO_TO_SEGMENT, SEGMENT_NAMES_ACCEPTED, SEGMENT_TO_PROTO
from services.common.market_calendar import Phase, market_phase
from services.common.timestamps import timestamp
from services.feed.gateway.streams import TerminalStream

log = logging.getLogger(__name__)

PHASE_TO_PROTO: Final[dict[Phase, feed_pb2.MarketPhase]] = {
    Phase.PRE_OPEN: feed_pb2.MARKET_PHASE_PRE_OPEN,
    Phase.OPEN: feed_pb2.MARKET_PHASE_OPEN,
    Phase.CLOSED: feed_pb2.MARKET_PHASE_CLOSED,
    Phase.HOLIDAY: feed_pb2.MARKET_PHASE_HOLIDAY,
}
# Every Dhan segment, in ExchangeSegment order (the order of every answer).
SEGMENTS: Final = tuple(sorted(SEGMENT_TO_PROTO, key=lambda name: SEGMENT_TO_PROTO[name]))

# The longest the watch sleeps on a clock that runs in real time: how late it notices a step.
REAL_CLOCK_POLL_SECONDS: Final = 60.0
# On an injected clock (tests), which moves only when told to.
INJECTED_CLOCK_POLL_SECONDS: Final = 0.05
_EARLY_WAKE_SECONDS: Final = 0.005  # event-loop timers may fire this much early


@dataclass(frozen=True)
class SegmentState:
    """A segment's phase at some moment, and when and to what it next changes."""

    segment: str
    phase: Phase
    next_change_at: datetime
    next_phase: Phase

    def message(self) -> feed_pb2.SegmentMarketState:
        return feed_pb2.SegmentMarketState(
            exchange_segment=SEGMENT_TO_PROTO[self.segment],
            phase=PHASE_TO_PROTO[self.phase],
            next_change_at=timestamp(self.next_change_at),
            next_phase=PHASE_TO_PROTO[self.next_phase],
        )


def segment_state(segment: str, at: datetime) -> SegmentState:
    phase, next_change_at = market_phase(segment, at)
    return SegmentState(segment, phase, next_change_at, market_phase(segment, next_change_at)[0])


def requested_segments(values: Sequence[int]) -> list[str]:
    """The segments a request names, in ExchangeSegment order; every segment when it names
    none. INVALID_ARGUMENT for an unspecified or unknown value, saying what is accepted."""
    if not values:
        return list(SEGMENTS)
    for index, value in enumerate(values):
        if value not in PROTO_TO_SEGMENT:
            raise InvalidArgument(
                f"exchange_segments[{index}] is {value}, not a segment; accepted: {SEGMENT_NAMES_ACCEPTED} "
                "(or none, for every segment)"
            )
    wanted = {PROTO_TO_SEGMENT[v] for v in values}
    return [s for s in SEGMENTS if s in wanted]


def phase_change(before: SegmentState, now: datetime) -> tuple[SegmentState, datetime | None]:
    """The segment's state at `now` and, when its phase is not `before`'s, when it changed:
    `before`'s next change when the clock crossed exactly that one, else `now` (the clock
    jumped over several changes, or back)."""
    after = segment_state(before.segment, now)
    if after.phase == before.phase:
        return after, None
    if before.next_change_at <= now:
        crossed = segment_state(before.segment, before.next_change_at)
        if now < crossed.next_change_at:
            return after, before.next_change_at
    return after, now


class MarketWatch:
    """Every segment's state as last told to the streams, refreshed from the clock; `run` is
    its background task."""

    def __init__(
        self,
        clock: Clock,
        streams: Callable[[], Iterable[TerminalStream]],
        poll_seconds: float = REAL_CLOCK_POLL_SECONDS,
    ) -> None:
        self.clock = clock
        self._streams = streams
        self._poll = poll_seconds
        now = clock.now()
        self._seen_at = now
        self._states = {s: segment_state(s, now) for s in SEGMENTS}
        self._messages = [self._states[s].message() for s in SEGMENTS]
        self._due = min(state.next_change_at for state in self._states.values())

    def messages(self) -> list[feed_pb2.SegmentMarketState]:
        """Every segment's state as the streams know it (a snapshot's market_states)."""
        return self._messages

    def states_now(self, segments: Collection[str]) -> tuple[datetime, list[SegmentState]]:
        """The clock's time and the state at it of `segments`, read afresh (GetMarketState)."""
        now = self.clock.now()
        return now, [segment_state(s, now) for s in SEGMENTS if s in segments]

    def refresh(self) -> list[feed_pb2.MarketPhaseChange]:
        """Looks at the clock; when a phase changed, tells every open stream. Returns the changes."""
        now = self.clock.now()
        if self._seen_at <= now < self._due:
            self._seen_at = now
            return []  # nothing due, and the clock did not go back
        self._seen_at = now
        changes = []
        for segment in SEGMENTS:
            before = self._states[segment]
            after, changed_at = phase_change(before, now)
            self._states[segment] = after
            if changed_at is not None:
                change = feed_pb2.MarketPhaseChange(
                    state=after.message(),
                    previous_phase=PHASE_TO_PROTO[before.phase],
                    changed_at=timestamp(changed_at),
                )
                changes.append(change)
                log.info(
                    "market phase changed",
                    extra={
                        "segment": segment,
                        "from": str(before.phase),
                        "to": str(after.phase),
                        "at": str(changed_at),
                    },
                )
        self._messages = [self._states[s].message() for s in SEGMENTS]
        self._due = min(state.next_change_at for state in self._states.values())
        if changes:
            self._announce(changes)
        return changes

    def _announce(self, changes: list[feed_pb2.MarketPhaseChange]) -> None:
        events = [feed_pb2.StreamEvent(occurred_at=c.changed_at, market_phase=c) for c in changes]
        for stream in list(self._streams()):
            for event in events:
                stream.send_event(event)

    def seconds_to_due(self) -> float:
        """Real seconds until the next change, if the clock runs in real time; at most the poll."""
        until = (self._due - self.clock.now()).total_seconds() + _EARLY_WAKE_SECONDS
        return min(max(until, 0.0), self._poll)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds_to_due())
            self.refresh()
