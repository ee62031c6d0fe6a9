"""The re-centring rule on its own: the hysteresis boundaries (past the midpoint between
strikes), the price checks (missing, zero, stale) and the cooldown on a monotonic clock."""

from __future__ import annotations

from services.common.last_prices import LastQuote, last_quote
from services.subscription.recenter_policy import (
    SKIP_NO_PRICE,
    SKIP_STALE_PRICE,
    SKIP_ZERO_PRICE,
    RecenterPolicy,
    beyond_hysteresis,
    centred_on_previous_close,
)

K, STEP = 24_000.0, 50.0


def test_hysteresis_counts_from_the_midpoint_between_strikes() -> None:
    # Default 0.6: the midpoint is at K +/- 25, the threshold 0.6 * 50 = 30 beyond it.
    assert not beyond_hysteresis(K + 55, K, STEP, 0.6)
    assert beyond_hysteresis(K + 55.01, K, STEP, 0.6)
    assert not beyond_hysteresis(K - 55, K, STEP, 0.6)
    assert beyond_hysteresis(K - 55.01, K, STEP, 0.6)
    # Past the midpoint (the ATM has changed) but within the hysteresis: stays.
    assert not beyond_hysteresis(K + 26, K, STEP, 0.6)
    # 0: as soon as another strike is nearer.
    assert not beyond_hysteresis(K + 25, K, STEP, 0.0)
    assert beyond_hysteresis(K + 25.01, K, STEP, 0.0)
    # No window yet: always.
    assert beyond_hysteresis(K, None, STEP, 0.6) and beyond_hysteresis(K, K, None, 0.6)


def test_a_price_wobbling_after_a_recentre_does_not_flap() -> None:
    price = K + 56  # re-centres on K + 50
    assert beyond_hysteresis(price, K, STEP, 0.6)
    new_centre = K + STEP
    back = [p for p in range(int(K - 60), int(K + 120)) if beyond_hysteresis(p, new_centre, STEP, 0.6)]
    assert max(p for p in back if p < new_centre) == K - 6  # back needs a swing past K - 5: 1.2 steps down


def test_prices_that_may_not_centre_a_chain() -> None:
    wall = [1_000.0]
    policy = RecenterPolicy(0.6, 5.0, 60.0, wall=lambda: wall[0])
    assert policy.price_problem(None) == SKIP_NO_PRICE
    assert policy.price_problem(LastQuote(0.0, wall[0])) == SKIP_ZERO_PRICE
    assert policy.price_problem(LastQuote(-1.0, None)) == SKIP_ZERO_PRICE
    assert policy.price_problem(LastQuote(K, wall[0] - 60.0)) is None  # exactly the bound: still fresh
    assert policy.price_problem(LastQuote(K, wall[0] - 60.5)) == SKIP_STALE_PRICE
    assert policy.price_problem(LastQuote(K, None)) is None  # a source without receive times


def test_the_cooldown_runs_on_the_monotonic_clock_per_chain() -> None:
    ticks = [50.0]
    policy = RecenterPolicy(0.6, 5.0, 60.0, monotonic=lambda: ticks[0])
    assert not policy.cooling("tier_b:chain:NIFTY:2026-11-24")
    policy.moved("tier_b:chain:NIFTY:2026-11-24")
    ticks[0] += 4.9
    assert policy.cooling("tier_b:chain:NIFTY:2026-11-24") and not policy.cooling("unit:7")
    ticks[0] += 0.1
    assert not policy.cooling("tier_b:chain:NIFTY:2026-11-24")


def test_previous_close_is_recognised_from_the_stored_source() -> None:
    assert centred_on_previous_close("3") and not centred_on_previous_close("2") and not centred_on_previous_close(None)


class _Bare:
    async def last_price(self, segment: str, security_id: int) -> float | None:
        return 101.0 if security_id == 13 else None


class _Timed(_Bare):
    async def last_quote(self, segment: str, security_id: int) -> LastQuote | None:
        return LastQuote(102.0, 5.0)


async def test_last_quote_uses_receive_times_when_the_source_has_them() -> None:
    assert await last_quote(_Bare(), "IDX_I", 13) == LastQuote(101.0, None)
    assert await last_quote(_Bare(), "IDX_I", 14) is None
    assert await last_quote(_Timed(), "IDX_I", 13) == LastQuote(102.0, 5.0)
