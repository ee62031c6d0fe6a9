"""A shard's snapshot at the gateway: the last values it sends on every (re)connect, whose
parts of one instrument (previous close, OI, tick) all carry the instrument's latest number."""

from __future__ import annotations

from services.dhan import encode_oi, encode_prev_close
from services.feed.gateway.hub import Hub, ShardLink
from tests.gateway_fixtures import KEY, SECURITY_ID, SEGMENT, full_packet, hub_and_link, records


class Marks:
    def __init__(self) -> None:
        self.sequences: list[int] = []

    def mark(self, key: int, sequence: int) -> None:
        self.sequences.append(sequence)

    def upstream_changed(self, event: object) -> None:
        pass

    def status_changed(self, instrument: object) -> None:
        pass


def _hub() -> tuple[Hub, ShardLink, Marks]:
    hub, link = hub_and_link()
    marks = Marks()
    hub.attach(marks, [KEY])
    return hub, link, marks


def test_a_fresh_gateway_takes_every_part_of_a_snapshot_under_one_number() -> None:
    hub, link, marks = _hub()
    prev, oi, tick = (
        encode_prev_close(SEGMENT, SECURITY_ID, 97.5, 4000),
        encode_oi(SEGMENT, SECURITY_ID, 5000),
        full_packet(100.25),
    )
    hub.apply_snapshot(link, records(42, prev, oi, tick))
    latest = hub.instruments[KEY].latest
    assert latest is not None
    assert (latest.sequence, latest.prev, latest.oi, latest.tick) == (42, prev, oi, tick)
    message = latest.message(0)
    assert message.last_price == 100.25 and message.previous_close == 97.5
    assert marks.sequences == [42], "one value, one mark"


def test_a_repeated_snapshot_adds_nothing_and_a_newer_one_keeps_the_parts_it_lacks() -> None:
    hub, link, marks = _hub()
    prev = encode_prev_close(SEGMENT, SECURITY_ID, 97.5, 4000)
    hub.apply_snapshot(link, records(42, prev, full_packet(100.25)))
    hub.apply_snapshot(link, records(42, prev, full_packet(100.25)))  # a reconnect with nothing new
    assert marks.sequences == [42]
    newer = full_packet(101.0)
    hub.apply_snapshot(link, records(50, newer))
    latest = hub.instruments[KEY].latest
    assert latest is not None and (latest.sequence, latest.tick, latest.prev) == (50, newer, prev)
    assert marks.sequences == [42, 50]


def test_a_truncated_snapshot_keeps_what_came_before_the_cut() -> None:
    hub, link, _ = _hub()
    whole = records(7, full_packet(100.25))
    hub.apply_snapshot(link, whole + whole[:30])
    latest = hub.instruments[KEY].latest
    assert latest is not None and latest.sequence == 7
    assert hub.errors.malformed == 1 and "30 stray bytes" in (hub.errors.last_error or "")
