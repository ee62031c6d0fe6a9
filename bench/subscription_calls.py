"""The subscription service calls the benchmarks make: the units a watchlist add can take
(every F&O stock and options expiry with a full default chain), one timed add, the status,
and the code of a failed call. Used by bench.subscription and bench.feed."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from bench.registry_child import SEED

ADD_DEADLINE_SECONDS = 10.0
STATUS_DEADLINE_SECONDS = 5.0


def error_code(error: BaseException) -> str:
    code = getattr(error, "code", None)
    return code().name if callable(code) else type(error).__name__


async def watchlist_units(registry_address: str) -> list[tuple[str, str]]:
    """Every (F&O stock, options expiry) pair the registry lists with a full default window."""
    import grpc
    from dataserver.registry.v1 import registry_pb2 as rpb
    from dataserver.registry.v1 import registry_pb2_grpc

    from services.dhan.generator import load_equity_rows, load_fno_stocks

    symbols = [stock.symbol for stock in load_fno_stocks(load_equity_rows())]
    pairs: list[tuple[str, str]] = []
    async with grpc.aio.insecure_channel(registry_address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for symbol in symbols:
            reply = await stub.ListExpiries(
                rpb.ListExpiriesRequest(underlying_symbol=symbol, kind=rpb.DERIVATIVE_KIND_OPTIONS, page_size=50),
                timeout=5,
            )
            pairs += [(symbol, e.expiry_date) for e in reply.expiries if e.strike_count >= 2 * 12 + 1]
    random.Random(SEED).shuffle(pairs)
    return pairs


@dataclass
class AddResult:
    seconds: float
    instruments: list[tuple[int, int]]
    evictions: int


async def add(stub: Any, pb: Any, pair: tuple[str, str], user_id: str = "", strikes_each_side: int = 0) -> AddResult:
    """One new unit: `pair`'s chain, `strikes_each_side` wide (0: the service's default)."""
    symbol, expiry = pair
    sent = time.perf_counter()
    request = pb.AddWatchlistItemRequest(
        symbol=symbol, expiry_date=expiry, user_id=user_id, strikes_each_side=strikes_each_side
    )
    reply = await stub.AddWatchlistItem(request, timeout=ADD_DEADLINE_SECONDS)
    elapsed = time.perf_counter() - sent
    if not reply.created:
        raise RuntimeError(f"{symbol} {expiry} was not a new unit")
    keys = [(k.exchange_segment, k.security_id) for k in reply.watchlist_item.instruments]
    return AddResult(elapsed, keys, len(reply.evictions))


async def get_status(stub: Any, pb: Any) -> Any:
    return await stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), timeout=STATUS_DEADLINE_SECONDS)
