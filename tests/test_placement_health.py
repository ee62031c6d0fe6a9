"""The pure rules behind failover: where new instruments go given down shards, where a down
shard's instruments move, what rebalancing touches, and how reports make a shard down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.subscription.placement import NoRoom, place, plan_failover, plan_moves
from services.subscription.shard_health import ShardReport, assess

LIMIT = 20
shard_loads = st.lists(st.integers(0, LIMIT), min_size=1, max_size=5)


@given(shard_loads, st.data())
def test_place_prefers_live_shards_and_never_passes_the_limit(loads: list[int], data: st.DataObject) -> None:
    down = data.draw(st.frozensets(st.integers(0, len(loads) - 1)))
    count = data.draw(st.integers(0, 2 * LIMIT))
    room = sum(LIMIT - load for load in loads)
    if count > room:
        with pytest.raises(NoRoom):
            place(loads, LIMIT, count, down)
        return
    chosen = place(loads, LIMIT, count, down)
    after = list(loads)
    for shard in chosen:
        after[shard] += 1
    assert len(chosen) == count and all(load <= LIMIT for load in after)
    live_room = sum(LIMIT - loads[s] for s in range(len(loads)) if s not in down)
    on_down = sum(1 for s in chosen if s in down)
    assert on_down == max(0, count - live_room)  # a down shard only once the live ones are full


def test_place_without_down_shards_is_unchanged() -> None:
    assert place([3, 1, 1], 10, 4) == [1, 2, 1, 2]
    assert place([3, 1, 1], 10, 4, down={1}) == [2, 2, 0, 2]


@given(shard_loads, st.data())
def test_failover_moves_only_to_live_shards_with_room(loads: list[int], data: st.DataObject) -> None:
    down = data.draw(st.frozensets(st.integers(0, len(loads) - 1), min_size=1))
    movable = {s: data.draw(st.integers(0, loads[s])) for s in sorted(down)}
    cap = data.draw(st.integers(0, 3 * LIMIT))
    moves = plan_failover(loads, LIMIT, movable, down, cap)
    after = list(loads)
    for source, target in moves:
        assert source in down and target not in down
        after[target] += 1  # the source keeps counting it until the move ends
    assert all(load <= LIMIT for load in after) and len(moves) <= cap
    for source, count in movable.items():
        assert sum(1 for s, _ in moves if s == source) <= count
    live_room = sum(LIMIT - loads[s] for s in range(len(loads)) if s not in down)
    assert len(moves) == min(cap, live_room, sum(movable.values()))


@given(shard_loads, st.data())
def test_rebalance_leaves_down_shards_alone(loads: list[int], data: st.DataObject) -> None:
    down = data.draw(st.frozensets(st.integers(0, len(loads) - 1)))
    moves = plan_moves(loads, None, down)
    after = list(loads)
    for source, target in moves:
        assert source not in down and target not in down
        after[source] -= 1
        after[target] += 1
    live = [after[s] for s in range(len(loads)) if s not in down]
    assert not live or max(live) - min(live) <= 1


NOW = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)


def _report(shard: int, connected: bool, ago: float, interval: float = 5.0) -> ShardReport:
    down_since = None if connected else NOW - timedelta(seconds=ago + 30)
    reason = "" if connected else "broker disconnect 805: too many connections"
    return ShardReport(shard, connected, down_since, reason, NOW - timedelta(seconds=ago), interval)


def test_down_is_a_report_saying_so_or_three_intervals_of_silence() -> None:
    health = assess([_report(1, False, 1), _report(2, True, 14), _report(3, True, 16)], 5, NOW)
    assert health.down == {1, 3}  # 0 and 4 never reported: up; 2 reported within three intervals
    by_id = {s.shard_id: s for s in health.shards}
    assert by_id[1].reason == "broker disconnect 805: too many connections"
    assert by_id[1].down_since == NOW - timedelta(seconds=31)
    assert by_id[3].reason.startswith("no report since ") and by_id[3].down_since == NOW - timedelta(seconds=16)
    assert [s.shard_id for s in health.down_longer_than(20)] == [1]
    assert [s.shard_id for s in health.down_longer_than(10)] == [1, 3]  # longest down first
