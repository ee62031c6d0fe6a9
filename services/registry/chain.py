"""The ATM engine: at-the-money strike, strike step and the window of an option chain.

The step comes from the listed strikes around the ATM (NIFTY lists 50-point strikes near the
money and 100-point ones further out), never from a table. The window counts listed strikes
and is clipped at the edges of the listing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from services.dhan.master import InstrumentRecord
from services.registry.catalog import ChainListing


@dataclass(frozen=True)
class ChainWindow:
    atm_strike: float
    strike_step: float
    strikes: tuple[tuple[float, InstrumentRecord | None, InstrumentRecord | None], ...]
    listed_strike_count: int
    clipped_below: int
    clipped_above: int


def atm_index(strikes: list[float], price: float) -> int:
    """Index of the listed strike nearest `price`; a tie goes to the lower strike."""
    if not strikes:
        raise ValueError("no listed strikes")
    position = bisect.bisect_left(strikes, price)
    if position == 0:
        return 0
    if position == len(strikes):
        return len(strikes) - 1
    below, above = strikes[position - 1], strikes[position]
    return position - 1 if price - below <= above - price else position


def strike_step(strikes: list[float], index: int) -> float:
    """The spacing at `index`: the smaller gap to a neighbouring listed strike."""
    gaps = []
    if index > 0:
        gaps.append(strikes[index] - strikes[index - 1])
    if index + 1 < len(strikes):
        gaps.append(strikes[index + 1] - strikes[index])
    return round(min(gaps), 6) if gaps else 0.0


def chain_window(listing: ChainListing, price: float, each_side: int) -> ChainWindow:
    strikes = listing.strikes
    centre = atm_index(strikes, price)
    low = max(0, centre - each_side)
    high = min(len(strikes) - 1, centre + each_side)
    return ChainWindow(
        atm_strike=strikes[centre],
        strike_step=strike_step(strikes, centre),
        strikes=tuple((s, listing.calls.get(s), listing.puts.get(s)) for s in strikes[low : high + 1]),
        listed_strike_count=len(strikes),
        clipped_below=each_side - (centre - low),
        clipped_above=each_side - (high - centre),
    )
