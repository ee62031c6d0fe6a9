"""Where instruments go: the least-loaded shard for a new one, and the fewest moves that even
the shards out. Pure functions, so the rules are tested on their own."""

from __future__ import annotations

import heapq
from collections.abc import Sequence


class NoRoom(Exception):
    """No shard has room (the budget is full, or moves in flight hold the room)."""


def place(loads: Sequence[int], limit: int, count: int) -> list[int]:
    """Shard ids for `count` new instruments, each on the least-loaded shard with room
    (lowest id on ties); `loads` counts in-flight moves on both sides."""
    heap = [(load, shard) for shard, load in enumerate(loads) if load < limit]
    heapq.heapify(heap)
    chosen: list[int] = []
    for _ in range(count):
        if not heap:
            raise NoRoom(f"no shard has room for {count - len(chosen)} more instruments (limit {limit} each)")
        load, shard = heapq.heappop(heap)
        chosen.append(shard)
        if load + 1 < limit:
            heapq.heappush(heap, (load + 1, shard))
    return chosen


def spread(loads: Sequence[int]) -> int:
    return max(loads) - min(loads) if loads else 0


def balanced_targets(loads: Sequence[int]) -> list[int]:
    """The even distribution nearest `loads`: floor or ceil of the mean, the ceilings going to
    the shards that already hold the most, which is what keeps the moves fewest."""
    total, shards = sum(loads), len(loads)
    base, extra = divmod(total, shards)
    order = sorted(range(shards), key=lambda s: (-loads[s], s))
    targets = [base] * shards
    for shard in order[:extra]:
        targets[shard] += 1
    return targets


def plan_moves(loads: Sequence[int], max_moves: int | None = None) -> list[tuple[int, int]]:
    """(from_shard, to_shard) pairs, one per instrument; their number is the minimum,
    sum(max(0, load - target))."""
    targets = balanced_targets(loads)
    surplus = [(s, loads[s] - targets[s]) for s in range(len(loads)) if loads[s] > targets[s]]
    deficit = [(s, targets[s] - loads[s]) for s in range(len(loads)) if loads[s] < targets[s]]
    moves: list[tuple[int, int]] = []
    di = 0
    for source, extra in surplus:
        while extra:
            target, need = deficit[di]
            step = min(extra, need)
            moves += [(source, target)] * step
            extra -= step
            if step == need:
                di += 1
            else:
                deficit[di] = (target, need - step)
    return moves if max_moves is None else moves[:max_moves]
