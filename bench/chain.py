"""One option-chain update of 101 strikes (202 options) from raw ticks to the message, beside
the IV library (vollib) called directly on the same inputs, in the same run.

Ours: fresh hub Values of Full + previous-close packets (as the shards forward them) decoded,
the forward from put-call parity, IV and the four greeks per option, the OptionChainUpdate
serialised. The library: implied_volatility, delta, gamma, theta and vega per option on the
same prices, forward, strikes and time. Interleaved over ROUNDS rounds; the best of each.
"""

from __future__ import annotations

import math
import time
from datetime import date, datetime, timedelta

from dataserver.feed.v1 import feed_pb2
from vollib.black.greeks.analytical import delta, gamma, theta, vega
from vollib.black.implied_volatility import implied_volatility
from vollib.helpers.exceptions import PriceIsAboveMaximum, PriceIsBelowIntrinsic
from vollib.lets_be_rational import AboveMaximumException, BelowIntrinsicException

from bench.report import Report
from services import dhan as codec
from services.common.keys import wire_key
from services.common.market_calendar import IST
from services.dhan.synthetic import RISK_FREE_RATE
from services.feed.gateway import chain_math
from services.feed.gateway.chain import Leg, Row, Window, chain_update
from services.feed.gateway.hub import Instrument
from services.feed.gateway.values import Value
from simulator.market import option_price

# The library's refusals of a price without an IV (as chain_math catches them).
_NO_IV = (PriceIsBelowIntrinsic, PriceIsAboveMaximum, BelowIntrinsicException, AboveMaximumException)
STRIKES = 101
ROUNDS = 7
RATIO_TARGET = 1.3
SPOT, STEP, VOL, DAYS = 24_987.35, 50.0, 0.13, 6
FNO, IDX = 2, 0


def _full(security_id: int, segment: int, price: float, oi: int) -> bytes:
    depth = [
        codec.DepthLevel(100, 100, 2, 2, round(price - 0.05 * (k + 1), 2), round(price + 0.05 * (k + 1), 2))
        for k in range(5)
    ]
    return codec.encode_full(
        segment, security_id, price, 75, 1_790_000_000, price, 10_000, 5_000, 5_000,
        oi, oi, oi, price, price, price, price, depth,
    )  # fmt: skip


def _market(now: datetime, expiry: date) -> tuple[Window, list[tuple[Instrument, bytes, bytes]]]:
    """A chain of STRIKES strikes around SPOT priced as the simulator prices them (0.05 tick)."""
    years = chain_math.years_to_expiry(now, expiry)
    forward = SPOT * math.exp(RISK_FREE_RATE * years)
    first = round(SPOT / STEP) * STEP - STEP * (STRIKES // 2)
    rows, quotes = [], []
    underlying = wire_key("IDX_I", 13)
    quotes.append((Instrument(underlying), _full(13, IDX, SPOT, 0), codec.encode_prev_close(IDX, 13, SPOT - 40, 0)))
    for n in range(STRIKES):
        strike = first + STEP * n
        keys = []
        for leg, is_call in ((2 * n, True), (2 * n + 1, False)):
            security_id = 40_000 + leg
            price = max(0.05, round(option_price(forward, strike, years, VOL, RISK_FREE_RATE, is_call) / 0.05) * 0.05)
            key = wire_key("NSE_FNO", security_id)
            prev = codec.encode_prev_close(FNO, security_id, price * 1.1, 90_000)
            quotes.append((Instrument(key), _full(security_id, FNO, round(price, 2), 100_000 + leg), prev))
            keys.append(key)
        rows.append(Row(strike, keys[0], keys[1]))
    return Window(underlying, expiry, tuple(rows), rows[STRIKES // 2].strike), quotes


def _ours(window: Window, quotes: list[tuple[Instrument, bytes, bytes]], now: datetime) -> tuple[float, bytes]:
    # Fresh values of new ticks (nothing decoded yet); the previous-close packets are carried
    # from value to value as the hub does, so each leg has decoded its own already.
    values = {i.key: Value(i, 1, 0, tick, None, prev) for i, tick, prev in quotes}
    legs = {}
    for i, _, prev in quotes:
        leg = legs[i.key] = Leg()
        leg.of(Value(i, 0, 0, None, None, prev))
    began = time.perf_counter()
    update = chain_update(window, lambda k: legs[k].of(values[k]), lambda k: "", now, RISK_FREE_RATE)
    message = update.SerializeToString()
    return time.perf_counter() - began, message


def _library(inputs: list[tuple[float, float, float, float, float, str]]) -> float:
    began = time.perf_counter()
    for price, forward, strike, years, rate, flag in inputs:
        try:
            iv = implied_volatility(price, forward, strike, rate, years, flag)
        except _NO_IV:
            continue
        delta(flag, forward, strike, years, rate, iv)
        gamma(flag, forward, strike, years, rate, iv)
        theta(flag, forward, strike, years, rate, iv)
        vega(flag, forward, strike, years, rate, iv)
    return time.perf_counter() - began


def run(report: Report) -> None:
    now = datetime(2026, 11, 20, 11, 0, tzinfo=IST)
    expiry = (now + timedelta(days=DAYS)).date()
    window, quotes = _market(now, expiry)
    _, first = _ours(window, quotes, now)
    update = feed_pb2.OptionChainUpdate.FromString(first)
    priced = [
        (leg.last_price, update.forward_price, row.strike_price, update.years_to_expiry, update.rate, flag)
        for row in update.rows
        for leg, flag in ((row.call, "c"), (row.put, "p"))
        if leg.last_price > 0
    ]
    with_iv = sum(
        leg.greeks_status == feed_pb2.GREEKS_STATUS_COMPUTED for row in update.rows for leg in (row.call, row.put)
    )
    best_ours = best_library = math.inf
    for _ in range(ROUNDS):
        best_ours = min(best_ours, _ours(window, quotes, now)[0])
        best_library = min(best_library, _library(priced))
    report.note(
        f"one chain update of {STRIKES} strikes ({len(priced)} priced options, {with_iv} with an IV): raw ticks to the "
        f"serialised message, vs vollib's IV + delta/gamma/theta/vega on the same inputs, best of {ROUNDS}"
    )
    report.add("chain.update_ours", best_ours * 1e3, "ms")
    report.add("chain.update_vollib", best_library * 1e3, "ms")
    report.add("chain.update_ratio", best_ours / best_library, "x", target=RATIO_TARGET, op="<=")


if __name__ == "__main__":
    run(Report())
