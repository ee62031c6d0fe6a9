"""Last prices for "use last price" chains, from the feed gateway's snapshot.

The registry never blocks on the feed: an unreachable or not-yet-built gateway simply means
no live price, and the chain falls back to the master's previous close.
"""

from __future__ import annotations

from typing import Protocol


class LastPriceSource(Protocol):
    async def last_price(self, segment: str, security_id: int) -> float | None: ...


class NoLastPrices:
    async def last_price(self, segment: str, security_id: int) -> float | None:
        return None
