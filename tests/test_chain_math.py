"""The option chain's math: vollib's Black-76 as called by us, put-call parity on simulated chains."""

from __future__ import annotations

import math
from datetime import date, datetime

import pytest
from vollib.black import black
from vollib.black.greeks.analytical import delta, gamma, theta, vega
from vollib.black.implied_volatility import implied_volatility

from services.common.market_calendar import IST
from services.dhan.synthetic import RISK_FREE_RATE
from services.feed.gateway import chain_math
from simulator.market import option_price

CASES = [  # forward, strike, years, rate, sigma, flag
    (100.0, 100.0, 0.5, 0.02, 0.2, "c"),
    (49.0, 50.0, 0.3846, 0.05, 0.2, "p"),
    (22_000.0, 21_500.0, 7 / 365, 0.065, 0.13, "c"),
    (22_000.0, 22_600.0, 2 / 365, 0.065, 0.18, "p"),
]


@pytest.mark.parametrize(("forward", "strike", "years", "rate", "sigma", "flag"), CASES)
def test_iv_and_greeks_are_the_librarys(
    forward: float, strike: float, years: float, rate: float, sigma: float, flag: str
) -> None:
    price = black(flag, forward, strike, years, rate, sigma)
    got = chain_math.option_greeks(price, forward, strike, years, rate, flag == "c")
    assert got is not None
    iv = implied_volatility(price, forward, strike, rate, years, flag)
    assert got.implied_volatility == iv
    assert got.implied_volatility == pytest.approx(sigma, rel=1e-9)
    assert got.delta == delta(flag, forward, strike, years, rate, iv)
    assert got.gamma == gamma(flag, forward, strike, years, rate, iv)
    assert got.theta == theta(flag, forward, strike, years, rate, iv)
    assert got.vega == vega(flag, forward, strike, years, rate, iv)


@pytest.mark.parametrize("price", [0.0, -1.0, math.nan, math.inf, 0.01])
def test_an_option_without_a_valid_price_has_no_iv(price: float) -> None:
    # 0.01 is below the discounted intrinsic of a call 2000 in the money.
    assert chain_math.option_greeks(price, 22_000.0, 20_000.0, 7 / 365, 0.065, True) is None


def test_time_to_expiry_is_calendar_years_to_1530_ist() -> None:
    now = datetime(2026, 12, 4, 15, 30, tzinfo=IST)  # a Friday
    assert chain_math.years_to_expiry(now, date(2026, 12, 8)) == pytest.approx(4 / 365)  # weekend counts
    assert chain_math.years_to_expiry(now, date(2026, 12, 4)) == chain_math.MIN_YEARS


def test_put_call_parity_recovers_the_simulators_forward() -> None:
    spot, years, vol, rate = 22_137.4, 6 / 365, 0.13, RISK_FREE_RATE
    forward = spot * math.exp(rate * years)
    strikes = [21_000.0 + 50 * i for i in range(45)]

    def tick(price: float) -> float:  # the simulator prints on the 0.05 tick, never below one tick
        return max(0.05, round(price / 0.05) * 0.05)

    calls = [tick(option_price(forward, k, years, vol, rate, True)) for k in strikes]
    puts = [tick(option_price(forward, k, years, vol, rate, False)) for k in strikes]
    puts[3] = math.nan  # an unpriced leg keeps its strike out of the vote
    got = chain_math.forward_from_parity(strikes, calls, puts, spot, years, rate)
    assert got is not None
    assert got == pytest.approx(forward, abs=0.1)
    for k, c, p in zip(strikes, calls, puts, strict=True):
        for price, is_call in ((c, True), (p, False)):
            greeks = chain_math.option_greeks(price, got, k, years, rate, is_call)
            if greeks is not None and abs(k - spot) < 500:
                assert 0.08 < greeks.implied_volatility < 0.2


def test_no_forward_without_a_strike_priced_on_both_sides() -> None:
    assert chain_math.forward_from_parity([100.0], [5.0], [0.0], 100.0, 0.1, 0.0) is None


def test_atm_is_the_nearest_strike() -> None:
    assert chain_math.atm_strike([100.0, 150.0, 200.0], 174.0) == 150.0
    assert chain_math.atm_strike([], 1.0) is None
