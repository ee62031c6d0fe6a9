"""The pool's fill from 0 through watchlist adds, as bench.subscription measures it (its fill
phase, and the fills with one and two accounts): FILL_CLIENTS concurrent clients, each acting
for its own user id, add distinct units until one more unit would not fit once the ones in
flight land (tracked from the replies' instruments); then one status read. The time runs from
the first send to that status reply."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.subscription_calls import add, error_code, get_status

FILL_CLIENTS = 8
FILL_TIME_LIMIT_SECONDS = 180.0


@dataclass(frozen=True)
class FillShape:
    capacity: int
    unit_size: int  # the most instruments one unit adds
    strikes_each_side: int = 0  # 0: the service's default stock chain

    @property
    def full_at(self) -> int:
        """Subscribed from which the pool counts as full: less than one unit short."""
        return self.capacity - self.unit_size


@dataclass
class Fill:
    """What the fill's clients did."""

    held: set[tuple[int, int]] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    progress: list[tuple[float, int]] = field(default_factory=list)  # (seconds, instruments held)
    in_flight: int = 0
    evictions: int = 0
    units: int = 0
    elapsed: float = 0.0
    status: Any = None  # the status read at the end
    unused: list[tuple[str, str]] = field(default_factory=list)  # pairs left, in their order

    def full(self, shape: FillShape) -> bool:
        return self.status is not None and self.status.subscribed_count >= shape.full_at


async def fill(stub: Any, pb: Any, pairs: list[tuple[str, str]], shape: FillShape) -> Fill:
    """Fills the pool from 0 with units of `pairs`, in order."""
    queue = list(reversed(pairs))
    result = Fill()
    deadline = time.monotonic() + FILL_TIME_LIMIT_SECONDS

    async def client(n: int) -> None:
        user = f"bench-user-{n}"
        while queue and time.monotonic() < deadline:
            if len(result.held) + (result.in_flight + 1) * shape.unit_size > shape.capacity:
                return  # one more unit would not fit once the ones in flight land
            pair = queue.pop()
            result.in_flight += 1
            try:
                added = await add(stub, pb, pair, user, shape.strikes_each_side)
            except Exception as error:
                result.errors[error_code(error)] += 1
                continue
            finally:
                result.in_flight -= 1
            result.latencies.append(added.seconds)
            result.held.update(added.instruments)
            result.evictions += added.evictions
            result.units += 1
            result.progress.append((time.perf_counter() - started, len(result.held)))

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(FILL_CLIENTS)))
    result.status = await get_status(stub, pb)
    result.elapsed = time.perf_counter() - started
    result.unused = list(reversed(queue))
    return result
