"""Price models: what each instrument's next tick looks like.

- Every underlying (index, stock, commodity) is a geometric random walk in *time*, not in
  ticks: a step over dt seconds has sd ``vol * sqrt(dt / trading-seconds-per-year)``. So
  prices move like the real market however fast the feed ticks (a bench run at 100k
  packets/s does not send NIFTY to zero), and a test drives them with a fake clock. The
  walk is reflected at +-10 % of its start (a daily price band) so a long run stays sane.
- Cash instruments and indices print the walk rounded to their tick, +-1 tick of bid/ask
  bounce so that they look alive between clock steps.
- Futures print walk * basis (the master's future/spot previous-close ratio, else the cost
  of carry), rounded, with the same bounce.
- Options print Black-76 on the *current* forward (spot * e^(rT), or the MCX future they
  are written on) with the generator's volatility smile, rounded to the tick and never
  below one tick, and without bounce: at one instant a chain is monotone in strike
  (rounding and the one-tick floor are non-decreasing maps, so they keep it).
- Start levels are the master's previous closes (the generator's, via its sidecar) or
  ``generator.underlying_price``; option and future parameters come from the same module,
  so the first ticks agree with the master's prices.

A ``Book`` holds one instrument's session state (last trade, day OHLC, volume, OI, depth);
volume and OI only grow, ATP is a volume-weighted average of printed prices and so stays
inside low..high, bids sit strictly below asks at every level.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from datetime import date

from services.feed.codec import (
    encode_full,
    encode_oi,
    encode_prev_close,
    encode_quote,
    encode_ticker,
)
from services.registry import generator as gen
from services.registry.generator import GeneratorConfig

from .catalog import Asset, Catalog, Contract, Key

YEAR_SECONDS = 365.0 * 86_400.0  # option time to expiry is calendar time
TRADING_SECONDS_PER_YEAR = 252 * 6.25 * 3_600.0  # the walk's clock: NSE session seconds
MIN_EXPIRY_YEARS = 600.0 / YEAR_SECONDS  # an expired or expiring option keeps 10 minutes
BAND = 0.10  # walks reflect at +-10 % of their start level
INT32_MAX = 2**31 - 1  # Dhan documents volume and OI as int32: saturate, never wrap
UINT16_MAX = 0xFFFF  # LTQ field
MAX_UNIT = 10_000  # largest quantity step (see Book.lot)
UNKNOWN_LEVEL = 100.0
DERIVATIVE_SEGMENTS = frozenset({"NSE_FNO", "BSE_FNO", "MCX_COMM", "NSE_CURRENCY", "BSE_CURRENCY"})
_INDEX_VOL = {s.symbol: s.vol for s in gen.INDEX_SPECS}
_MCX_VOL = {s.symbol: s.vol for s in gen.MCX_SPECS}
_POOL = 64  # (a power of two) per-book pools of random depth quantities, cycled instead of drawn per tick
_SQRT2 = math.sqrt(2.0)


class Walk:
    """Geometric Brownian motion (no drift in expectation), evaluated lazily at ``now``."""

    __slots__ = ("value", "level", "_t", "_sd_per_sqrt_s", "_gauss", "_lo", "_hi")

    def __init__(self, level: float, vol: float, now: float, gauss: Callable[[float, float], float]) -> None:
        self.level = level
        self.value = level
        self._t = now
        self._sd_per_sqrt_s = vol / math.sqrt(TRADING_SECONDS_PER_YEAR)
        self._gauss = gauss
        self._lo = level * (1.0 - BAND)
        self._hi = level * (1.0 + BAND)

    def at(self, now: float, _exp: Callable[[float], float] = math.exp, _sqrt: Callable[[float], float] = math.sqrt) -> float:
        dt = now - self._t
        if dt > 0.0:
            sd = self._sd_per_sqrt_s * _sqrt(dt)
            v = self.value * _exp(sd * self._gauss(0.0, 1.0) - 0.5 * sd * sd)
            # Reflect (in ratio) at the band; one reflection suffices for any sane step.
            if v > self._hi:
                v = max(self._lo, self._hi * self._hi / v)
            elif v < self._lo:
                v = min(self._hi, self._lo * self._lo / v)
            self.value = v
            self._t = now
        return self.value


def option_price(forward: float, strike: float, years: float, vol: float, rate: float, is_call: bool) -> float:
    """Black-76 (Black-Scholes when forward = spot * e^(rT)) with the generator's smile."""
    vol = gen._smile_vol(vol, strike, forward, years)  # same smile as the master's prices
    sd = vol * math.sqrt(years)
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    df = math.exp(-rate * years)
    # N(x) = erfc(-x / sqrt 2) / 2
    if is_call:
        return df * 0.5 * (forward * math.erfc(-d1 / _SQRT2) - strike * math.erfc(-d2 / _SQRT2))
    return df * 0.5 * (strike * math.erfc(d2 / _SQRT2) - forward * math.erfc(d1 / _SQRT2))


Pools = dict[int, tuple[list[int], list[int]]]


def _pools(pools: Pools, lot: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Depth quantities (lot multiples, <= 2M) and order counts, shared by every book of one lot
    size (each book reads them at its own offset): 25k books would otherwise hold ~90 MB
    of int lists. Longer than _POOL so that depth can index k + 33 without wrapping."""
    pair = pools.get(lot)
    if pair is None:
        pair = pools[lot] = (
            [lot * rng.randint(1, 200) for _ in range(_POOL + 34)],
            [rng.randint(1, 40) for _ in range(_POOL + 34)],
        )
    return pair


class Book:
    """One instrument's session: last trade, day OHLC, volume, OI and 5-level depth.

    ``tick(now)`` prints one trade; the ``*_packet`` methods encode the current state with
    the codec. Attributes are plain floats/ints so that tests can check them directly."""

    __slots__ = (
        "contract", "segment", "security_id", "tick_size", "lot", "is_option", "is_derivative", "_fair", "_rnd",
        "prev_close", "prev_oi", "ltp", "ltq", "ltt", "atp", "volume", "_pv", "total_buy_qty", "total_sell_qty",
        "oi", "day_high_oi", "day_low_oi", "day_open", "day_high", "day_low", "_best_bid", "_best_ask", "_max_lots",
        "_qty", "_orders", "_k", "ticks",
    )  # fmt: skip

    def __init__(
        self, contract: Contract, fair: Callable[[float], float], now: float, rng: random.Random, pools: Pools | None = None
    ) -> None:
        self.contract = contract
        self.segment = contract.wire_segment
        self.security_id = contract.security_id
        self.tick_size = contract.tick
        # Quantities move in lots; lots above MAX_UNIT (BSE debt: up to 10,000,000) would
        # overflow the int32/uint16 fields, so their quantities use MAX_UNIT instead.
        self.lot = min(contract.lot, MAX_UNIT)
        self.is_option = contract.kind == "option"
        self.is_derivative = contract.is_derivative
        self._fair = fair
        self._rnd = rng.random
        lot = self.lot
        # Trades of 1..max_lots lots, skewed towards small ones; LTQ must fit a uint16.
        self._max_lots = max(1, min(20 if self.is_derivative else 500, UINT16_MAX // lot))
        self._qty, self._orders = _pools({} if pools is None else pools, lot, rng)
        self._k = rng.randrange(_POOL)
        self.ticks = 0

        n = self._ticks(now)
        price = n * self.tick_size  # the same product as the depth prices, so they compare exactly
        self.prev_close = contract.prev_close or price
        self.prev_oi = lot * rng.randint(2_000, 200_000) if self.is_derivative else 0
        self.ltp = price
        self.ltq = lot
        self.ltt = int(now)
        self.day_open = self.day_high = self.day_low = price
        self.atp = price
        # Joining mid-session: some volume already traded, all of it at the open.
        self.volume = lot * rng.randint(100, 20_000)
        self._pv = price * self.volume
        self.total_buy_qty = lot * rng.randint(500, 50_000)
        self.total_sell_qty = lot * rng.randint(500, 50_000)
        self.oi = self.day_high_oi = self.day_low_oi = self.prev_oi
        self._best_bid = self._best_ask = 0
        self._quote_book(n)

    def _ticks(self, now: float) -> int:
        """The next print in whole ticks (>= 1): the model's fair value rounded to the
        tick, +-1 tick of bid/ask bounce except for options (keeps chains monotone)."""
        n: int = round(self._fair(now) / self.tick_size)
        if not self.is_option:
            r = self._rnd()
            n += -1 if r < 0.25 else (1 if r > 0.75 else 0)
        return n if n > 1 else 1

    def _quote_book(self, n: int) -> None:
        """Best bid at ``n`` or ``n-1`` ticks, best ask 1-2 ticks above it (so bid1 < LTP
        <= ask1 or bid1 <= LTP < ask1), and a new draw of depth quantities."""
        rnd = self._rnd
        self._best_bid = n - 1 if (n > 1 and rnd() < 0.5) else n
        self._best_ask = self._best_bid + (2 if rnd() < 0.3 else 1)
        self._k = (self._k + 5) & (_POOL - 1)

    @property
    def depth(self) -> list[tuple[int, int, int, int, float, float]]:
        """Five levels (bid qty, ask qty, bid orders, ask orders, bid price, ask price),
        one tick apart on each side; a bid level that would be <= 0 is empty (zeros).
        Built on demand: only Full packets carry depth."""
        t, b, a = self.tick_size, self._best_bid, self._best_ask
        q, o, k = self._qty, self._orders, self._k
        if b > 5:  # the common case, unrolled
            return [
                (q[k], q[k + 29], o[k], o[k + 29], b * t, a * t),
                (q[k + 1], q[k + 30], o[k + 1], o[k + 30], (b - 1) * t, (a + 1) * t),
                (q[k + 2], q[k + 31], o[k + 2], o[k + 31], (b - 2) * t, (a + 2) * t),
                (q[k + 3], q[k + 32], o[k + 3], o[k + 32], (b - 3) * t, (a + 3) * t),
                (q[k + 4], q[k + 33], o[k + 4], o[k + 33], (b - 4) * t, (a + 4) * t),
            ]
        return [
            (q[k + i], q[k + 29 + i], o[k + i], o[k + 29 + i], (b - i) * t, (a + i) * t)
            if b - i >= 1
            else (0, q[k + 29 + i], 0, o[k + 29 + i], 0.0, (a + i) * t)
            for i in range(5)
        ]

    def tick(self, now: float) -> None:
        """Prints one trade at ``now`` (UTC epoch seconds)."""
        rnd = self._rnd
        n = self._ticks(now)
        price = n * self.tick_size  # the same product as the depth prices, so they compare exactly
        self.ticks += 1
        self.ltp = price
        self.ltt = int(now)
        ltq = self.lot * (1 + int(rnd() ** 3 * self._max_lots))  # <= lot * max_lots <= 65535
        self.ltq = ltq
        if price > self.day_high:
            self.day_high = price
        elif price < self.day_low:
            self.day_low = price
        volume = self.volume + ltq
        if volume <= INT32_MAX:
            self.volume = volume
            self._pv += price * ltq
            atp = round(self._pv / volume, 2)
            self.atp = self.day_low if atp < self.day_low else (self.day_high if atp > self.day_high else atp)
        if self.is_derivative and rnd() < 0.2:
            self.oi = min(INT32_MAX, self.oi + self.lot * (1 + int(rnd() * 20)))
            self.day_high_oi = self.oi  # OI only grows here, so the day's low stays the open
        step = self.lot * (int(rnd() * 21) - 10)
        self.total_buy_qty = min(INT32_MAX, max(self.lot, self.total_buy_qty + step))
        self.total_sell_qty = min(INT32_MAX, max(self.lot, self.total_sell_qty - step))
        self._quote_book(n)

    # --- packets (bytes, one per frame) ---------------------------------------------

    def prev_close_packet(self) -> bytes:
        return encode_prev_close(self.segment, self.security_id, self.prev_close, self.prev_oi)

    def ticker_packet(self) -> bytes:
        return encode_ticker(self.segment, self.security_id, self.ltp, self.ltt)

    def quote_packet(self) -> bytes:
        # day_close carries the running close (the LTP) during the session.
        return encode_quote(
            self.segment, self.security_id, self.ltp, self.ltq, self.ltt, self.atp, self.volume,
            self.total_sell_qty, self.total_buy_qty, self.day_open, self.ltp, self.day_high, self.day_low,
        )  # fmt: skip

    def oi_packet(self) -> bytes:
        return encode_oi(self.segment, self.security_id, self.oi)

    def full_packet(self, volume: int | None = None) -> bytes:
        """``volume`` replaces the book's volume in the packet (the simulator's bench-only
        ``stamp_send_time`` puts the send time there); the book is unchanged."""
        return encode_full(
            self.segment, self.security_id, self.ltp, self.ltq, self.ltt, self.atp, self.volume if volume is None else volume,
            self.total_sell_qty, self.total_buy_qty, self.oi, self.day_high_oi, self.day_low_oi,
            self.day_open, self.ltp, self.day_high, self.day_low, self.depth,
        )  # fmt: skip


class Market:
    """Books by (segment, security id), created on first use and shared by every
    connection (two sockets subscribing one instrument see one market)."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        master_seed: int = 7,
        trading_date: date | None = None,
    ) -> None:
        self.catalog = catalog
        self.now = clock  # UTC epoch seconds; tests pass a fake clock
        self.rng = random.Random(seed)
        self._gen_config = GeneratorConfig(trading_date or catalog.trading_date, seed=master_seed)
        self._books: dict[Key, Book] = {}
        self._walks: dict[tuple[Asset, str], Walk] = {}
        self._forwards: dict[Key, Callable[[float], float]] = {}
        self._pools: Pools = {}

    def __len__(self) -> int:
        return len(self._books)

    def book(self, segment: str, security_id: int) -> Book:
        key = (segment, security_id)
        book = self._books.get(key)
        if book is None:
            contract = self.catalog.get(key) or _unknown_contract(segment, security_id)
            book = self._books[key] = Book(contract, self._fair(contract), self.now(), self.rng, self._pools)
        return book

    # --- models -------------------------------------------------------------------

    def _vol(self, asset: Asset, symbol: str) -> float:
        if asset == "index":
            return 0.80 if symbol == "INDIA VIX" else _INDEX_VOL.get(symbol, 0.15)
        if asset == "commodity":
            return _MCX_VOL.get(symbol, 0.35)
        if asset == "currency":
            return 0.05
        if symbol.startswith("?"):
            return 0.25
        return gen._stock_vol(symbol, self._gen_config)  # the vol the master's options used

    def walk(self, asset: Asset, symbol: str) -> Walk:
        key = (asset, symbol)
        walk = self._walks.get(key)
        if walk is None:
            walk = self._walks[key] = Walk(self._level(asset, symbol), self._vol(asset, symbol), self.now(), self.rng.gauss)
        return walk

    def _level(self, asset: Asset, symbol: str) -> float:
        """Start level: the spot's previous close, else the nearest future's previous
        close less carry, else the generator's level for the symbol."""
        spot = self.catalog.spot(asset, symbol)
        if spot is not None and spot.prev_close:
            return spot.prev_close
        if symbol.startswith("?"):
            return UNKNOWN_LEVEL
        for future in self.catalog.futures(asset, symbol):
            if future.prev_close and asset != "commodity":  # MCX: the generator's spot is exact
                return future.prev_close / self._carry(future, self.now())
        return gen.underlying_price(symbol, self._gen_config)

    def _carry(self, future: Contract, now: float) -> float:
        rate = gen.MCX_CARRY if future.asset == "commodity" else gen.RISK_FREE_RATE
        return math.exp(rate * self._years(future, now))

    @staticmethod
    def _years(contract: Contract, now: float) -> float:
        assert contract.expiry_ts is not None
        return max(MIN_EXPIRY_YEARS, (contract.expiry_ts - now) / YEAR_SECONDS)

    def _future_fair(self, future: Contract) -> Callable[[float], float]:
        fair = self._forwards.get(future.key)
        if fair is None:
            walk = self.walk(future.asset, future.underlying)
            now = self.now()
            if future.prev_close:
                basis = future.prev_close / walk.level  # keeps the master's future/spot ratio
            elif future.expiry_ts is not None:
                basis = self._carry(future, now)
            else:
                basis = 1.0
            at = walk.at

            def fair(t: float) -> float:
                return at(t) * basis

            self._forwards[future.key] = fair
        return fair

    def _fair(self, c: Contract) -> Callable[[float], float]:
        if c.kind in ("index", "equity"):
            return self.walk(c.asset, c.underlying).at
        if c.kind == "future":
            return self._future_fair(c)
        # Options: MCX options are written on a future; the others on spot * e^(rT).
        assert c.strike is not None and c.expiry_ts is not None
        strike, expiry_ts, is_call = c.strike, c.expiry_ts, c.is_call
        vol = self._vol(c.asset, c.underlying)
        underlying_future = self.catalog.future_for_option(c) if c.asset == "commodity" else None
        rate = gen.RISK_FREE_RATE
        if underlying_future is not None:
            forward = self._future_fair(underlying_future)
        else:
            spot = self.walk(c.asset, c.underlying).at
            carry = gen.MCX_CARRY if c.asset == "commodity" else rate

            def forward(t: float) -> float:
                return spot(t) * math.exp(carry * max(MIN_EXPIRY_YEARS, (expiry_ts - t) / YEAR_SECONDS))

        def fair(t: float) -> float:
            years = max(MIN_EXPIRY_YEARS, (expiry_ts - t) / YEAR_SECONDS)
            return option_price(forward(t), strike, years, vol, rate, is_call)

        return fair


def _unknown_contract(segment: str, security_id: int) -> Contract:
    """An id the master does not list: a plausible walk from Rs 100 of its own (with OI
    when its segment trades derivatives)."""
    derivative = segment in DERIVATIVE_SEGMENTS
    return Contract(
        segment=segment,
        security_id=security_id,
        kind="future" if derivative else "equity",
        asset="stock",
        symbol=f"?{segment}:{security_id}",
        underlying=f"?{segment}:{security_id}",
        tick=0.05,
        lot=1,
        prev_close=UNKNOWN_LEVEL,
    )
