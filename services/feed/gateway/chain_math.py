"""Option-chain math: the forward from put-call parity, time to expiry, Black-76 IV and greeks.

Pure functions over floats; the inversion and the greeks are vollib's (Black-76, `vollib.black`),
never a solver of our own. Conventions are the library's: theta per calendar day, vega per one
volatility point (0.01), delta and gamma per unit of the forward.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time

from vollib.black.greeks.analytical import delta, gamma, theta, vega
from vollib.black.implied_volatility import implied_volatility
from vollib.helpers.exceptions import PriceIsAboveMaximum, PriceIsBelowIntrinsic
from vollib.lets_be_rational import AboveMaximumException, BelowIntrinsicException

from services.common.market_calendar import IST

# Equity and index derivatives settle at the NSE/BSE close.
EXPIRY_TIME = time(15, 30)
# Calendar time, ACT/365: theta decays over weekends and holidays too (the market reprices the
# Friday-to-Monday gap), and the simulator and Indian exchanges quote IV on calendar days.
YEAR_SECONDS = 365.0 * 86_400.0
# An option in its last minutes keeps this much time, so the inversion stays defined.
MIN_YEARS = 60.0 / YEAR_SECONDS
# Strikes nearest the spot with both legs priced that vote on the forward (the median of K + e^(rT)(C - P)).
PARITY_STRIKES = 5


@dataclass(frozen=True, slots=True)
class Greeks:
    implied_volatility: float
    delta: float
    gamma: float
    theta: float
    vega: float


def years_to_expiry(now: datetime, expiry: date, at: time = EXPIRY_TIME) -> float:
    """Calendar years (ACT/365) from `now` to `at` IST on the expiry date, at least MIN_YEARS."""
    settles = datetime.combine(expiry, at, tzinfo=IST)
    return max(MIN_YEARS, (settles - now).total_seconds() / YEAR_SECONDS)


def valid_price(price: float) -> bool:
    return math.isfinite(price) and price > 0.0


def forward_from_parity(
    strikes: Sequence[float],
    calls: Sequence[float],
    puts: Sequence[float],
    spot: float,
    years: float,
    rate: float,
    count: int = PARITY_STRIKES,
) -> float | None:
    """The forward implied by put-call parity, C - P = e^(-rT) (F - K), at the `count` strikes
    nearest `spot` where both legs have a valid price; None when no strike has both."""
    carry = math.exp(rate * years)
    both = [
        (abs(k - spot), k + carry * (c - p))
        for k, c, p in zip(strikes, calls, puts, strict=True)
        if valid_price(c) and valid_price(p)
    ]
    if not both:
        return None
    both.sort()
    return float(statistics.median(f for _, f in both[:count]))


def option_greeks(
    price: float, forward: float, strike: float, years: float, rate: float, is_call: bool
) -> Greeks | None:
    """Black-76 IV and greeks of one option at a discounted `price`; None when the price has no
    implied volatility (not positive, not finite, at or below the discounted intrinsic, or above
    the maximum), so a caller shows "no IV" rather than a wrong number."""
    if not valid_price(price) or not (forward > 0.0 and strike > 0.0):
        return None
    flag = "c" if is_call else "p"
    try:
        iv = float(implied_volatility(price, forward, strike, rate, years, flag))
    # vollib raises its own exceptions or, from its lets_be_rational core, that package's.
    except (PriceIsBelowIntrinsic, PriceIsAboveMaximum, BelowIntrinsicException, AboveMaximumException):
        return None
    if not (math.isfinite(iv) and iv > 0.0):
        return None
    return Greeks(
        implied_volatility=iv,
        delta=float(delta(flag, forward, strike, years, rate, iv)),
        gamma=float(gamma(flag, forward, strike, years, rate, iv)),
        theta=float(theta(flag, forward, strike, years, rate, iv)),
        vega=float(vega(flag, forward, strike, years, rate, iv)),
    )


def atm_strike(strikes: Sequence[float], price: float) -> float | None:
    """The listed strike nearest `price` (the lower one on a tie)."""
    return min(strikes, key=lambda k: (abs(k - price), k)) if strikes else None
