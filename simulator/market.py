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
  ``synthetic.underlying_price``; option and future parameters come from the same module,
  so the first ticks agree with the master's prices.

A ``Book`` holds one instrument's session state (last trade, day OHLC, volume, OI, depth);
volume and OI only grow, ATP is a volume-weighted average of printed prices and so stays
inside low..high, bids sit strictly below asks at every level. A tick's randomness (bounce,
trade size, OI, order quantities, quote) comes from tables drawn once from the market's
seeded rng and cycled per book: the same seed gives the same packets.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable
from datetime import date

from services.common.keys import Key
from services.dhan import synthetic
from services.dhan.encode import encode_full, encode_oi, encode_prev_close, encode_quote, encode_ticker
from services.dhan.protocol import (
    DEPTH_LEVELS,
    DEPTH_PRICE_FIELDS,
    DEPTH_QUANTITY_FIELDS,
    FULL_CODE,
    FULL_SCALAR_FIELDS,
    FULL_SIZE,
    HEADER_FIELDS,
    IST_OFFSET_SECONDS,
)
from services.dhan.synthetic import GeneratorConfig

from .catalog import Asset, Catalog, Contract

YEAR_SECONDS = 365.0 * 86_400.0  # option time to expiry is calendar time
TRADING_SECONDS_PER_YEAR = 252 * 6.25 * 3_600.0  # the walk's clock: NSE session seconds
MIN_EXPIRY_YEARS = 600.0 / YEAR_SECONDS  # an expired or expiring option keeps 10 minutes
BAND = 0.10  # walks reflect at +-10 % of their start level
INT32_MAX = 2**31 - 1  # Dhan documents volume and OI as int32: saturate, never wrap
UINT16_MAX = 0xFFFF  # LTQ field
MAX_UNIT = 10_000  # largest quantity step (see Book.lot)
UNKNOWN_LEVEL = 100.0
DERIVATIVE_SEGMENTS = frozenset({"NSE_FNO", "BSE_FNO", "MCX_COMM", "NSE_CURRENCY", "BSE_CURRENCY"})
_INDEX_VOL = {s.symbol: s.vol for s in synthetic.INDEX_SPECS}
_MCX_VOL = {s.symbol: s.vol for s in synthetic.MCX_SPECS}
_POOL = 64  # (a power of two) per-book pools of random depth quantities, cycled instead of drawn per tick
_DRAWS = 4096  # (a power of two) rows of pre-drawn per-tick randomness, cycled per book (see Tables)
_DRAW_MASK = _DRAWS - 1
_SQRT2 = math.sqrt(2.0)
# The Full layout (services.dhan.protocol) with each level's quantities and orders as one
# pre-packed string: the same bytes (a test checks them against encode_full) from 15
# arguments instead of 30.
_LEVEL = struct.Struct("<" + DEPTH_QUANTITY_FIELDS).pack
_PACKED_LEVEL = f"{struct.calcsize('<' + DEPTH_QUANTITY_FIELDS)}s{DEPTH_PRICE_FIELDS}"
_PACK_FULL = struct.Struct("<" + HEADER_FIELDS + FULL_SCALAR_FIELDS + _PACKED_LEVEL * DEPTH_LEVELS).pack


class Walk:
    """Geometric Brownian motion (no drift in expectation), evaluated lazily at ``now``."""

    __slots__ = ("_gauss", "_hi", "_lo", "_sd_per_sqrt_s", "_t", "level", "value")

    def __init__(self, level: float, vol: float, now: float, gauss: Callable[[float, float], float]) -> None:
        self.level = level
        self.value = level
        self._t = now
        self._sd_per_sqrt_s = vol / math.sqrt(TRADING_SECONDS_PER_YEAR)
        self._gauss = gauss
        self._lo = level * (1.0 - BAND)
        self._hi = level * (1.0 + BAND)

    def at(
        self, now: float, _exp: Callable[[float], float] = math.exp, _sqrt: Callable[[float], float] = math.sqrt
    ) -> float:
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

    def shift(self, factor: float, now: float) -> float:
        """Moves the walk by `factor` at `now` (a market move a test asks for), its band with it."""
        self.at(now)
        self.value *= factor
        self._lo *= factor
        self._hi *= factor
        return self.value


def option_price(forward: float, strike: float, years: float, vol: float, rate: float, is_call: bool) -> float:
    """Black-76 (Black-Scholes when forward = spot * e^(rT)) with the generator's smile."""
    vol = synthetic.smile_vol(vol, strike, forward, years)  # same smile as the master's prices
    sd = vol * math.sqrt(years)
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    df = math.exp(-rate * years)
    # N(x) = erfc(-x / sqrt 2) / 2
    if is_call:
        return df * 0.5 * (forward * math.erfc(-d1 / _SQRT2) - strike * math.erfc(-d2 / _SQRT2))
    return df * 0.5 * (strike * math.erfc(d2 / _SQRT2) - forward * math.erfc(d1 / _SQRT2))


# One tick's randomness: (bounce ticks, OI lots or 0, buy-qty step in lots (the sell side
# takes the opposite), best bid offset 0/1, ask gap 1/2, depth pool offset).
Draw = tuple[int, int, int, int, int, int]


class Tables:
    """Pre-drawn randomness shared by a market's books, each reading it at its own offset and
    cycling through it, instead of drawing per tick: depth quantities by lot size, the rest
    of a tick by kind, trade sizes by the most lots a trade may have. Drawn on first use
    from the market's seeded rng."""

    __slots__ = ("_depth", "_draws", "_trade_lots")

    def __init__(self) -> None:
        self._depth: dict[int, tuple[list[int], list[int], list[bytes]]] = {}
        self._draws: dict[tuple[bool, bool], tuple[Draw, ...]] = {}
        self._trade_lots: dict[int, tuple[int, ...]] = {}

    def depth(self, lot: int, rng: random.Random) -> tuple[list[int], list[int], list[bytes]]:
        """Depth quantities (lot multiples, <= 2M) and order counts: 25k books would
        otherwise hold ~90 MB of int lists. Longer than _POOL so that depth can index
        k + 33 without wrapping. The third list is level k + i of the depth packed for the
        wire (see _PACK_FULL)."""
        pools = self._depth.get(lot)
        if pools is None:
            qty = [lot * rng.randint(1, 200) for _ in range(_POOL + 34)]
            orders = [rng.randint(1, 40) for _ in range(_POOL + 34)]
            levels = [_LEVEL(qty[m], qty[m + 29], orders[m], orders[m + 29]) for m in range(_POOL + 5)]
            pools = self._depth[lot] = (qty, orders, levels)
        return pools

    def draws(self, derivative: bool, option: bool, rng: random.Random) -> tuple[Draw, ...]:
        """_DRAWS ticks' draws (see Draw) instead of six rng.random() calls and their
        arithmetic a tick. The buy-qty steps sum to zero over the table (the second half is
        the first negated, then shuffled), so that a cycle adds no drift; each is still
        uniform on -10..10."""
        table = self._draws.get((derivative, option))
        if table is None:
            rnd = rng.random
            steps = [int(rnd() * 21) - 10 for _ in range(_DRAWS // 2)]
            steps += [-x for x in steps]
            rng.shuffle(steps)
            rows = []
            for step in steps:
                r = rnd()
                bounce = (
                    0 if option else (-1 if r < 0.25 else (1 if r > 0.75 else 0))
                )  # options: none (monotone chains)
                oi = 1 + int(rnd() * 20) if derivative and rnd() < 0.2 else 0
                rows.append((bounce, oi, step, 1 if rnd() < 0.5 else 0, 2 if rnd() < 0.3 else 1, rng.randrange(_POOL)))
            table = self._draws[(derivative, option)] = tuple(rows)
        return table

    def trade_lots(self, max_lots: int, rng: random.Random) -> tuple[int, ...]:
        """_DRAWS trade sizes of 1..max_lots lots, skewed towards small ones; a table of
        their own, read at the same offset as draws(), because max_lots takes a few dozen
        values (lots above 131 or 3276 lower it) and each would copy the whole table."""
        table = self._trade_lots.get(max_lots)
        if table is None:
            rnd = rng.random
            table = self._trade_lots[max_lots] = tuple(1 + int(rnd() ** 3 * max_lots) for _ in range(_DRAWS))
        return table


class Book:
    """One instrument's session: last trade, day OHLC, volume, OI and 5-level depth.

    ``tick(now)`` prints one trade; the ``*_packet`` methods encode the current state with
    the codec. Attributes are plain floats/ints so that tests can check them directly."""

    __slots__ = (
        "_best_ask",
        "_best_bid",
        "_draws",
        "_fair",
        "_j",
        "_k",
        "_levels",
        "_orders",
        "_pv",
        "_qty",
        "_trade_lots",
        "atp",
        "contract",
        "day_high",
        "day_high_oi",
        "day_low",
        "day_low_oi",
        "day_open",
        "is_derivative",
        "is_option",
        "lot",
        "ltp",
        "ltq",
        "ltt",
        "oi",
        "prev_close",
        "prev_oi",
        "security_id",
        "segment",
        "tick_size",
        "ticks",
        "total_buy_qty",
        "total_sell_qty",
        "volume",
    )  # fmt: skip

    def __init__(
        self,
        contract: Contract,
        fair: Callable[[float], float],
        now: float,
        rng: random.Random,
        tables: Tables | None = None,
    ) -> None:
        self.contract = contract
        self.segment = contract.wire_segment
        self.security_id = contract.security_id
        self.tick_size = contract.tick
        # Quantities move in lots; lots above MAX_UNIT (BSE debt: up to 10,000,000) would
        # overflow the int32/uint16 fields, so their quantities use MAX_UNIT instead.
        self.lot = lot = min(contract.lot, MAX_UNIT)
        self.is_option = contract.kind == "option"
        self.is_derivative = contract.is_derivative
        self._fair = fair
        tables = Tables() if tables is None else tables
        # Trades of 1..max_lots lots; LTQ must fit a uint16.
        max_lots = max(1, min(20 if self.is_derivative else 500, UINT16_MAX // lot))
        self._draws = tables.draws(self.is_derivative, self.is_option, rng)
        self._trade_lots = tables.trade_lots(max_lots, rng)
        self._j = rng.randrange(_DRAWS)
        self._qty, self._orders, self._levels = tables.depth(lot, rng)
        self.ticks = 0

        bounce, _, _, bid_offset, ask_gap, self._k = self._draws[rng.randrange(_DRAWS)]
        n = max(1, round(fair(now) / self.tick_size) + bounce)
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
        self._best_bid = bid = n - bid_offset if n > 1 else n
        self._best_ask = bid + ask_gap

    @property
    def depth(self) -> list[tuple[int, int, int, int, float, float]]:
        """Five levels (bid qty, ask qty, bid orders, ask orders, bid price, ask price),
        one tick apart on each side; a bid level that would be <= 0 is empty (zeros).
        Built on demand: only Full packets carry depth (full_packet packs the same values
        without building it)."""
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

    def tick(self, now: float, _int32_max: int = INT32_MAX) -> None:
        """Prints one trade at ``now`` (UTC epoch seconds): the model's fair value rounded
        to the tick (+-1 tick of bid/ask bounce except for options, never below one tick),
        a trade of 1..max_lots lots, maybe some new OI, and a new quote. The hot path of
        the simulator: randomness comes from the book's draw table, bounds are ifs."""
        j = self._j
        self._j = (j + 1) & _DRAW_MASK
        bounce, oi_lots, step, bid_offset, ask_gap, self._k = self._draws[j]
        t = self.tick_size
        n = round(self._fair(now) / t) + bounce
        if n < 1:
            n = 1
        price = n * t  # the same product as the depth prices, so they compare exactly
        self.ticks += 1
        self.ltp = price
        self.ltt = int(now)
        lot = self.lot
        ltq = self.ltq = lot * self._trade_lots[j]  # <= lot * max_lots <= 65535
        high, low = self.day_high, self.day_low
        if price > high:
            self.day_high = high = price
        elif price < low:
            self.day_low = low = price
        volume = self.volume + ltq
        if volume <= _int32_max:
            self.volume = volume
            pv = self._pv = self._pv + price * ltq
            # round(pv / volume, 2) is slow (a decimal conversion); away from a half cent,
            # whole cents rounded in binary and divided by 100 are the same float.
            cents = pv / volume * 100.0
            whole = round(cents)
            atp = whole / 100.0 if -0.4999 < cents - whole < 0.4999 else round(pv / volume, 2)
            self.atp = low if atp < low else (high if atp > high else atp)
        if oi_lots:
            oi = self.oi + lot * oi_lots
            self.oi = self.day_high_oi = (
                oi if oi < _int32_max else _int32_max
            )  # OI only grows: the day's low stays the open
        step *= lot
        qty = self.total_buy_qty + step
        self.total_buy_qty = lot if qty < lot else (_int32_max if qty > _int32_max else qty)
        qty = self.total_sell_qty - step
        self.total_sell_qty = lot if qty < lot else (_int32_max if qty > _int32_max else qty)
        # Best bid at n or n-1 ticks, best ask 1-2 ticks above it: bid1 < LTP <= ask1 or
        # bid1 <= LTP < ask1.
        self._best_bid = bid = n - bid_offset if n > 1 else n
        self._best_ask = bid + ask_gap

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
        ``stamp_send_time`` puts the send time there); the book is unchanged. The common
        case (no empty bid level) packs ``depth``'s values inline: building its tuples and
        flattening them again took longer than the packing."""
        b = self._best_bid
        if b <= 5:
            return encode_full(
                self.segment, self.security_id, self.ltp, self.ltq, self.ltt, self.atp,
                self.volume if volume is None else volume, self.total_sell_qty, self.total_buy_qty,
                self.oi, self.day_high_oi, self.day_low_oi, self.day_open, self.ltp, self.day_high, self.day_low,
                self.depth,
            )  # fmt: skip
        t, a, ltp, lv, k = self.tick_size, self._best_ask, self.ltp, self._levels, self._k
        return _PACK_FULL(
            FULL_CODE, FULL_SIZE, self.segment, self.security_id, ltp, self.ltq, self.ltt + IST_OFFSET_SECONDS,
            self.atp, self.volume if volume is None else volume, self.total_sell_qty, self.total_buy_qty,
            self.oi, self.day_high_oi, self.day_low_oi, self.day_open, ltp, self.day_high, self.day_low,
            lv[k], b * t, a * t, lv[k + 1], (b - 1) * t, (a + 1) * t, lv[k + 2], (b - 2) * t, (a + 2) * t,
            lv[k + 3], (b - 3) * t, (a + 3) * t, lv[k + 4], (b - 4) * t, (a + 4) * t,
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
        self._bases: dict[Key, tuple[Walk, float]] = {}
        self._expiries: dict[tuple[Walk, float, float, float], list[tuple[float, float, float, float]]] = {}
        self._tables = Tables()

    def __len__(self) -> int:
        return len(self._books)

    def book(self, segment: str, security_id: int) -> Book:
        key = (segment, security_id)
        book = self._books.get(key)
        if book is None:
            contract = self.catalog.get(key) or _unknown_contract(segment, security_id)
            book = self._books[key] = Book(contract, self._fair(contract), self.now(), self.rng, self._tables)
        return book

    def move(self, asset: Asset, symbol: str, percent: float) -> float:
        """Moves an underlying (its spot, futures and options follow) by `percent`; returns the
        new level. KeyError when the catalog lists no such underlying."""
        if self.catalog.spot(asset, symbol) is None and not self.catalog.futures(asset, symbol):
            raise KeyError((asset, symbol))
        return self.walk(asset, symbol).shift(1.0 + percent / 100.0, self.now())

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
        return synthetic.stock_vol(symbol, self._gen_config)  # the vol the master's options used

    def walk(self, asset: Asset, symbol: str) -> Walk:
        key = (asset, symbol)
        walk = self._walks.get(key)
        if walk is None:
            walk = self._walks[key] = Walk(
                self._level(asset, symbol), self._vol(asset, symbol), self.now(), self.rng.gauss
            )
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
        return synthetic.underlying_price(symbol, self._gen_config)

    def _carry(self, future: Contract, now: float) -> float:
        rate = synthetic.MCX_CARRY if future.asset == "commodity" else synthetic.RISK_FREE_RATE
        return math.exp(rate * self._years(future, now))

    @staticmethod
    def _years(contract: Contract, now: float) -> float:
        assert contract.expiry_ts is not None
        return max(MIN_EXPIRY_YEARS, (contract.expiry_ts - now) / YEAR_SECONDS)

    def _future_basis(self, future: Contract) -> tuple[Walk, float]:
        """A future prints its underlying's walk times this basis."""
        pair = self._bases.get(future.key)
        if pair is None:
            walk = self.walk(future.asset, future.underlying)
            if future.prev_close:
                basis = future.prev_close / walk.level  # keeps the master's future/spot ratio
            elif future.expiry_ts is not None:
                basis = self._carry(future, self.now())
            else:
                basis = 1.0
            pair = self._bases[future.key] = (walk, basis)
        return pair

    def _future_fair(self, future: Contract) -> Callable[[float], float]:
        walk, basis = self._future_basis(future)
        at = walk.at

        def fair(t: float) -> float:
            return at(t) * basis

        return fair

    def _fair(self, c: Contract) -> Callable[[float], float]:
        if c.kind in ("index", "equity"):
            return self.walk(c.asset, c.underlying).at
        if c.kind == "future":
            return self._future_fair(c)
        # Options: MCX options are written on a future; the others on spot * e^(rT).
        assert c.strike is not None and c.expiry_ts is not None
        strike, expiry_ts, is_call = c.strike, c.expiry_ts, c.is_call
        base = self._vol(c.asset, c.underlying)
        underlying_future = self.catalog.future_for_option(c) if c.asset == "commodity" else None
        neg_rate = -synthetic.RISK_FREE_RATE
        if underlying_future is not None:  # the future's price (walk * basis) as is: e^0 = 1
            walk, basis = self._future_basis(underlying_future)
            carry = 0.0
        else:  # spot * e^(rT); x * 1.0 = x exactly
            walk, basis = self.walk(c.asset, c.underlying), 1.0
            carry = synthetic.MCX_CARRY if c.asset == "commodity" else synthetic.RISK_FREE_RATE
        at, min_years, year_seconds, sqrt2 = walk.at, MIN_EXPIRY_YEARS, YEAR_SECONDS, _SQRT2
        # (t, forward, sqrt(years), discount) shared by the options of one underlying and
        # expiry: the send loop ticks a whole batch at one instant, so all but the first
        # option of an expiry reuse them. (Only a clock stepping back to an instant it has
        # shown could tell: it gets the walk at that instant, not the walk's latest value.)
        at_t = self._expiries.setdefault((walk, basis, carry, expiry_ts), [(math.nan, 0.0, 0.0, 0.0)])

        # The forward, synthetic.smile_vol and option_price in one function with everything
        # bound locally (the nested calls cost more than the arithmetic), in the same operations
        # and order, so the same floats as option_price on the same forward.
        def fair(
            t: float,
            _log: Callable[[float], float] = math.log,
            _sqrt: Callable[[float], float] = math.sqrt,
            _exp: Callable[[float], float] = math.exp,
            _erfc: Callable[[float], float] = math.erfc,
        ) -> float:
            t0, forward, sqrt_years, df = at_t[0]
            if t0 != t:
                years = (expiry_ts - t) / year_seconds
                if years < min_years:
                    years = min_years
                forward = at(t) * basis * _exp(carry * years)
                sqrt_years = _sqrt(years)
                df = _exp(neg_rate * years)
                at_t[0] = (t, forward, sqrt_years, df)
            x = _log(strike / forward) / (base * sqrt_years)
            if x > 3.0:
                x = 3.0
            elif x < -3.0:
                x = -3.0
            sd = base * (1.0 - 0.06 * x + 0.025 * x * x) * sqrt_years
            d1 = (_log(forward / strike) + 0.5 * sd * sd) / sd
            d2 = d1 - sd
            if is_call:
                return df * 0.5 * (forward * _erfc(-d1 / sqrt2) - strike * _erfc(-d2 / sqrt2))
            return df * 0.5 * (strike * _erfc(d2 / sqrt2) - forward * _erfc(d1 / sqrt2))

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
