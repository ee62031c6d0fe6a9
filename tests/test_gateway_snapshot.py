"""A shard's snapshot at the gateway: the last values it sends on every (re)connect, whose
parts of one instrument (previous close, OI, tick) all carry the instrument's latest number."""

from __future__ import annotations

import time

from services.feed.codec import encode_full, encode_oi, encode_prev_close
from services.feed.gateway.hub import Hub, ShardLink
from services.feed.records import RECORD_HEADER, instrument_key

SEGMENT, SECURITY_ID = 2, 40_001  # NSE_FNO
KEY = instrument_key(SEGMENT, SECURITY_ID)


class Marks:
    def __init__(self) -> None:
        self.sequences: list[int] = []

    def mark(self, key: int, sequence: int) -> None:
        self.sequences.append(sequence)

    def upstream_changed(self, event: object) -> None:
        pass


def _full(ltp: float) -> bytes:
    return encode_full(SEGMENT, SECURITY_ID, ltp, 75, 1_700_000_000, ltp, 1000, 10, 10, 5, 5, 5, 99.0, 100.0, 101.0, 98.0)


def _snapshot(sequence: int, *packets: bytes) -> bytes:
    """Records as the shard's cache writes them: previous close, OI, then the tick."""
    now_us = int(time.time() * 1e6)
    return b"".join(RECORD_HEADER.pack(sequence, now_us) + packet for packet in packets)


def _hub() -> tuple[Hub, ShardLink, Marks]:
    hub = Hub((), gateway_id="test")
    marks = Marks()
    hub.attach(marks, [KEY])
    return hub, ShardLink(0, "unused", epoch="e1"), marks


def test_a_fresh_gateway_takes_every_part_of_a_snapshot_under_one_number() -> None:
    hub, link, marks = _hub()
    prev, oi, tick = encode_prev_close(SEGMENT, SECURITY_ID, 97.5, 4000), encode_oi(SEGMENT, SECURITY_ID, 5000), _full(100.25)
    hub.apply_snapshot(link, _snapshot(42, prev, oi, tick))
    latest = hub.instruments[KEY].latest
    assert latest is not None
    assert (latest.sequence, latest.prev, latest.oi, latest.tick) == (42, prev, oi, tick)
    message = latest.message(0)
    assert message.last_price == 100.25 and message.previous_close == 97.5
    assert marks.sequences == [42], "one value, one mark"


def test_a_repeated_snapshot_adds_nothing_and_a_newer_one_keeps_the_parts_it_lacks() -> None:
    hub, link, marks = _hub()
    prev = encode_prev_close(SEGMENT, SECURITY_ID, 97.5, 4000)
    hub.apply_snapshot(link, _snapshot(42, prev, _full(100.25)))
    hub.apply_snapshot(link, _snapshot(42, prev, _full(100.25)))  # a reconnect with nothing new
    assert marks.sequences == [42]
    newer = _full(101.0)
    hub.apply_snapshot(link, _snapshot(50, newer))
    latest = hub.instruments[KEY].latest
    assert latest is not None and (latest.sequence, latest.tick, latest.prev) == (50, newer, prev)
    assert marks.sequences == [42, 50]


def test_a_truncated_snapshot_keeps_what_came_before_the_cut() -> None:
    hub, link, _ = _hub()
    whole = _snapshot(7, _full(100.25))
    hub.apply_snapshot(link, whole + whole[:30])
    latest = hub.instruments[KEY].latest
    assert latest is not None and latest.sequence == 7
