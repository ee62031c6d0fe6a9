"""The synthetic market's numbers, shared by the master generator (previous closes) and the
feed simulator (its walks start there and price options the same way): the generator's
configuration, the underlyings with derivatives, seeded levels and volatilities, and
Black-76 with the volatility smile.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType
from typing import Final, Literal

RISK_FREE_RATE: Final = 0.065  # Indian cost of carry / discount rate
MCX_CARRY: Final = 0.02  # mild contango between energy futures months

Scale = Literal["full", "small"]


@dataclass(frozen=True)
class GeneratorConfig:
    trading_date: date
    seed: int = 7
    scale: Scale = "full"

    def __post_init__(self) -> None:
        scale_of(self.scale)


SCALES: Final[tuple[Scale, ...]] = ("full", "small")


def scale_of(text: str) -> Scale:
    """``text`` as a Scale; ValueError for anything else."""
    for scale in SCALES:
        if scale == text:
            return scale
    raise ValueError(f"scale must be 'full' or 'small', not {text!r}")


# --- underlyings ----------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSpec:
    """An index with derivatives; strike grids are fractions of spot at 30 days."""

    symbol: str
    exchange: Literal["NSE", "BSE"]
    lot: int
    level: float
    vol: float
    near_step: float
    far_step: float
    fut_tick_paise: int
    near_pct: float = 0.06
    far_pct: float = 0.20


INDEX_SPECS: Final = (
    IndexSpec("NIFTY", "NSE", 65, 25_900.0, 0.12, 50, 100, 10),
    IndexSpec("BANKNIFTY", "NSE", 30, 58_000.0, 0.14, 100, 500, 20),
    IndexSpec("FINNIFTY", "NSE", 60, 27_500.0, 0.14, 50, 100, 10),
    IndexSpec("MIDCPNIFTY", "NSE", 120, 13_500.0, 0.17, 25, 50, 5),
    IndexSpec("SENSEX", "BSE", 20, 84_500.0, 0.12, 100, 500, 5),
    IndexSpec("BANKEX", "BSE", 30, 65_000.0, 0.14, 100, 500, 5),
)


@dataclass(frozen=True)
class McxSpec:
    symbol: str
    level: float
    vol: float
    step: float
    fut_tick_paise: int
    opt_tick_paise: int
    range_pct: float


MCX_SPECS: Final = (
    McxSpec("CRUDEOIL", 5_400.0, 0.35, 50, 100, 10, 0.30),
    McxSpec("NATURALGAS", 330.0, 0.55, 5, 10, 5, 0.40),
)

# Fixed previous closes (rupees) so that well-known names look right; every other
# symbol gets a seeded lognormal level.
FIXED_LEVELS: Final[Mapping[str, float]] = MappingProxyType(
    {
        **{s.symbol: s.level for s in INDEX_SPECS},
        **{s.symbol: s.level for s in MCX_SPECS},
        "INDIA VIX": 12.0,
        "RELIANCE": 1_400.0,
        "HDFCBANK": 990.0,
        "ICICIBANK": 1_380.0,
        "INFY": 1_520.0,
        "TCS": 3_150.0,
        "SBIN": 960.0,
        "BHARTIARTL": 2_050.0,
        "ITC": 410.0,
        "LT": 3_950.0,
        "KOTAKBANK": 2_120.0,
        "AXISBANK": 1_210.0,
        "HINDUNILVR": 2_450.0,
        "MARUTI": 15_800.0,
        "BAJFINANCE": 1_010.0,
        "TATASTEEL": 172.0,
        "SUNPHARMA": 1_720.0,
    }
)


# --- seeded numbers -------------------------------------------------------------------


def _symbol_rng(seed: int, symbol: str) -> random.Random:
    """Per-symbol stream: a symbol's numbers do not depend on what else is generated,
    so small and full masters agree and BSE/NSE listings of a name share a price."""
    return random.Random(f"{seed}:{symbol}")


def round_to(value: float, step: float) -> float:
    return round(round(value / step) * step, 2)


def _seeded_level(rng: random.Random) -> float:
    """Lognormal around Rs 600, redrawn until within Rs 50..10,000 (no pile-up at the edges)."""
    while True:
        level = math.exp(rng.gauss(math.log(600.0), 1.1))
        if 50.0 <= level <= 10_000.0:
            return level


def underlying_price(symbol: str, config: GeneratorConfig) -> float:
    """Previous close of a cash instrument or index, in rupees."""
    if symbol in FIXED_LEVELS:
        return FIXED_LEVELS[symbol]
    return round_to(_seeded_level(_symbol_rng(config.seed, symbol)), 0.05)


def stock_vol(symbol: str, config: GeneratorConfig) -> float:
    """The volatility the master prices a stock's options with."""
    return _symbol_rng(config.seed, "vol:" + symbol).uniform(0.20, 0.45)


# --- pricing --------------------------------------------------------------------------


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def smile_vol(base: float, strike: float, forward: float, t: float) -> float:
    """Put skew plus mild curvature in standardised moneyness, flat beyond 3 sigma."""
    x = math.log(strike / forward) / (base * math.sqrt(t))
    x = max(-3.0, min(3.0, x))
    return base * (1.0 - 0.06 * x + 0.025 * x * x)


def black76(forward: float, strike: float, t: float, vol: float, rate: float) -> tuple[float, float]:
    """(call, put) on a forward; with forward = spot*e^(rt) this is Black-Scholes."""
    sd = vol * math.sqrt(t)
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    df = math.exp(-rate * t)
    call = df * (forward * _norm_cdf(d1) - strike * _norm_cdf(d2))
    put = df * (strike * _norm_cdf(-d2) - forward * _norm_cdf(-d1))
    return call, put
