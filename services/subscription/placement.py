"""Where instruments go: the least-loaded live shard for a new one, the fewest moves that even
the live shards out, and where a down shard's instruments fail over to. Pure functions, so
the rules are tested on their own; shard health comes in as the set of down shards."""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence


class NoRoom(Exception):
    """No shard has room (the budget is full, or moves in flight hold the room)."""


def place(loads: Sequence[int], limit: int, count: int, down: Collection[int] = frozenset()) -> list[int]:
    """Shard ids for `count` new instruments, each on the least-loaded shard with room (lowest
    id on ties); `loads` counts in-flight moves on both sides. Shards in `down` (their broker
    connection is down) get instruments only when no other shard has room: a stale instrument
    beats a refused add, and failover moves it once room appears."""
    chosen: list[int] = []
    for shards in ([s for s in range(len(loads)) if s not in down], [s for s in range(len(loads)) if s in down]):
        heap = [(loads[shard], shard) for shard in shards if loads[shard] < limit]
        heapq.heapify(heap)
        while heap and len(chosen) < count:
            load, shard = heapq.heappop(heap)
            chosen.append(shard)
            if load + 1 < limit:
                heapq.heappush(heap, (load + 1, shard))
    if len(chosen) < count:
        raise NoRoom(f"no shard has room for {count - len(chosen)} more instruments (limit {limit} each)")
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


def plan_moves(
    loads: Sequence[int], max_moves: int | None = None, down: Collection[int] = frozenset()
) -> list[tuple[int, int]]:
    """(from_shard, to_shard) pairs, one per instrument, evening out the shards not in `down`
    (failover empties those); their number is the minimum, sum(max(0, load - target))."""
    up = [s for s in range(len(loads)) if s not in down]
    if not up:
        return []
    moves = [(up[a], up[b]) for a, b in _even_out([loads[s] for s in up])]
    return moves if max_moves is None else moves[:max_moves]


def _even_out(loads: Sequence[int]) -> list[tuple[int, int]]:
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
    return moves


def plan_failover(
    loads: Sequence[int], limit: int, movable: Mapping[int, int], down: Collection[int], max_moves: int
) -> list[tuple[int, int]]:
    """(from_shard, to_shard) pairs moving up to `movable[s]` instruments off each down shard
    `s` (in the mapping's order), each to the least-loaded shard not in `down` with room; at
    most `max_moves`. A move counts on its target at once, and on its source until it ends."""
    heap = [(load, shard) for shard, load in enumerate(loads) if shard not in down and load < limit]
    heapq.heapify(heap)
    moves: list[tuple[int, int]] = []
    for source, count in movable.items():
        for _ in range(count):
            if not heap or len(moves) >= max_moves:
                return moves
            load, target = heapq.heappop(heap)
            moves.append((source, target))
            if load + 1 < limit:
                heapq.heappush(heap, (load + 1, target))
    return moves
