"""The simulator's price models, driven directly (no sockets) with a fake clock over a
few thousand ticks: tick grid, option chains monotone in strike, depth, volume/OI,
day OHLC, and agreement with the generated master's previous closes."""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from datetime import date, datetime, time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.market_calendar import IST
from services.dhan import (
    FullPacket,
    ProtocolErrors,
    QuotePacket,
    decode_frame,
    depth_levels,
    encode_full,
)
from services.dhan import synthetic as gen
from simulator.catalog import Catalog, Contract
from simulator.market import INT32_MAX, MIN_EXPIRY_YEARS, YEAR_SECONDS, Book, Market, option_price

TRADING_DATE = date(2026, 11, 20)
START = datetime.combine(TRADING_DATE, time(10, 0), IST).timestamp()


class FakeClock:
    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def catalog(masters_dir: Path) -> Catalog:
    return Catalog.generated(masters_dir, seed=7, scale="small", trading_date=TRADING_DATE)


def _market(catalog: Catalog, seed: int = 11) -> tuple[Market, FakeClock]:
    clock = FakeClock()
    return Market(catalog, seed=seed, clock=clock, trading_date=TRADING_DATE), clock


def _on_grid(price: float, tick: float) -> bool:
    steps = price / tick
    return abs(steps - round(steps)) < 1e-6


def _chains(catalog: Catalog) -> dict[tuple[str, float, bool], list[Contract]]:
    chains: dict[tuple[str, float, bool], list[Contract]] = defaultdict(list)
    for c in catalog.contracts():
        if c.kind == "option":
            assert c.expiry_ts is not None and c.strike is not None
            chains[(c.underlying, c.expiry_ts, c.is_call)].append(c)
    for chain in chains.values():
        chain.sort(key=lambda c: c.strike or 0.0)
    return chains


def _check_book(book: Book) -> None:
    tick = book.tick_size
    assert book.ltp >= tick and _on_grid(book.ltp, tick)
    assert book.ltq > 0
    assert book.day_low <= book.day_open <= book.day_high
    assert book.day_low <= book.ltp <= book.day_high  # the running close is the LTP
    assert book.day_low <= book.atp <= book.day_high
    depth = book.depth
    assert len(depth) == 5
    bids = [lvl[4] for lvl in depth if lvl[0] > 0]
    asks = [lvl[5] for lvl in depth]
    assert bids, "the best bid is never empty"
    assert all(b > 0 and _on_grid(b, tick) for b in bids)
    assert all(a > 0 and _on_grid(a, tick) for a in asks)
    assert all(x > y for x, y in itertools.pairwise(bids)), f"bids not strictly descending: {bids}"
    assert all(x < y for x, y in itertools.pairwise(asks)), f"asks not strictly ascending: {asks}"
    assert bids[0] < asks[0], f"crossed book: {bids[0]} >= {asks[0]}"
    assert bids[0] <= book.ltp <= asks[0]
    for lvl in depth:  # an empty bid level is all zeros; a filled one has orders
        assert (lvl[0] == 0) == (lvl[2] == 0) == (lvl[4] == 0.0)
        assert lvl[1] > 0 and lvl[3] > 0


def test_few_thousand_ticks_keep_every_invariant(catalog: Catalog) -> None:
    market, clock = _market(catalog)
    rng = random.Random(5)
    contracts = list(catalog.contracts())
    picked = rng.sample(contracts, 300) + [c for c in contracts if c.kind != "option"][:50]
    keys = list(dict.fromkeys([c.key for c in picked] + [("NSE_EQ", 987_654_321), ("NSE_FNO", 4_000_000_001)]))
    books = [market.book(*key) for key in keys]
    errors = ProtocolErrors()
    for step in range(6000):
        clock.t += rng.choice((0.0, 0.05, 0.5, 3.0))
        book = rng.choice(books)
        before = (book.volume, book.oi, book.ticks)
        book.tick(clock.t)
        _check_book(book)
        assert book.volume >= before[0] and book.oi >= before[1]
        assert book.volume == before[0] + book.ltq  # far from the int32 ceiling here
        assert book.atp == min(book.day_high, max(book.day_low, round(book._pv / book.volume, 2)))
        if book.is_derivative:
            assert book.day_low_oi <= book.oi == book.day_high_oi
        else:
            assert book.oi == 0
        if step % 7 == 0:  # through the wire format too: float32 keeps the order relations
            (full,) = decode_frame(book.full_packet(), errors)
            assert isinstance(full, FullPacket)
            assert full.day_low <= full.day_open <= full.day_high
            assert full.day_low <= full.ltp <= full.day_high and full.day_low <= full.atp <= full.day_high
            assert full.day_low <= full.day_close <= full.day_high
            assert depth_levels(full.depth)[0].bid_price < depth_levels(full.depth)[0].ask_price
            # float32 holds ~7 significant digits: on the grid up to that precision
            assert math.isclose(full.ltp, round(full.ltp / book.tick_size) * book.tick_size, rel_tol=1e-6)
            (quote,) = decode_frame(book.quote_packet(), errors)
            assert isinstance(quote, QuotePacket) and quote.volume == book.volume and quote.ltq > 0
    assert errors.malformed == 0
    assert sum(b.ticks for b in books) == 6000


def test_option_chains_are_monotone_in_strike_at_each_instant(catalog: Catalog) -> None:
    market, clock = _market(catalog, seed=3)
    chains = _chains(catalog)
    assert chains, "the small master has option chains"
    books = {key: [market.book(*c.key) for c in chain] for key, chain in chains.items()}
    rng = random.Random(9)
    for instant in range(25):
        # Between instants the underlyings move (minutes to hours of simulated time).
        clock.t += rng.choice((1.0, 60.0, 900.0, 3600.0))
        for (underlying, _expiry, is_call), chain in books.items():
            for book in chain:
                book.tick(clock.t)
            prices = [b.ltp for b in chain]
            pairs = list(itertools.pairwise(prices))
            if is_call:
                assert all(a >= b for a, b in pairs), (
                    f"{underlying} calls rise with strike at instant {instant}: {prices}"
                )
            else:
                assert all(a <= b for a, b in pairs), (
                    f"{underlying} puts fall with strike at instant {instant}: {prices}"
                )
            assert all(p > 0 for p in prices)


@settings(max_examples=300, deadline=None)
@given(
    forward=st.floats(50.0, 100_000.0),
    vol=st.floats(0.05, 0.8),
    years=st.floats(1e-5, 1.0),
    tick=st.sampled_from((0.05, 0.1, 0.5, 1.0)),
)
def test_rounded_option_prices_are_monotone_in_strike(forward: float, vol: float, years: float, tick: float) -> None:
    strikes = [forward * (0.5 + 0.01 * i) for i in range(101)]

    def rounded(k: float, call: bool) -> int:
        return max(1, round(option_price(forward, k, years, vol, 0.065, call) / tick))

    calls = [rounded(k, True) for k in strikes]
    puts = [rounded(k, False) for k in strikes]
    assert all(a >= b for a, b in itertools.pairwise(calls))
    assert all(a <= b for a, b in itertools.pairwise(puts))


def test_first_prices_match_the_master(catalog: Catalog) -> None:
    market, _ = _market(catalog)
    spots = [c for c in catalog.contracts() if c.kind in ("index", "equity") and c.prev_close]
    futures = [c for c in catalog.contracts() if c.kind == "future" and c.prev_close]
    assert spots and futures
    for c in spots + futures:
        book = market.book(*c.key)
        assert c.prev_close is not None
        assert book.prev_close == c.prev_close
        assert abs(book.ltp / c.prev_close - 1) < 0.005, (c.symbol, book.ltp, c.prev_close)
    # Near-the-money options: same model and smile as the generator, T differs by hours.
    for c in catalog.contracts():
        if c.kind == "option" and c.prev_close and c.prev_close > 50:
            book = market.book(*c.key)
            assert abs(book.ltp / c.prev_close - 1) < 0.15, (c.symbol, book.ltp, c.prev_close)


def test_derivatives_follow_their_underlying(catalog: Catalog) -> None:
    market, clock = _market(catalog, seed=21)
    nifty_spot = catalog.spot("index", "NIFTY")
    (nifty_future, *_) = catalog.futures("index", "NIFTY")
    assert nifty_spot is not None and nifty_spot.prev_close and nifty_future.prev_close
    spot, future = market.book(*nifty_spot.key), market.book(*nifty_future.key)
    basis = nifty_future.prev_close / nifty_spot.prev_close
    for _ in range(200):
        clock.t += 30.0
        spot.tick(clock.t)
        future.tick(clock.t)
        # Each side: half a tick of rounding plus at most one tick of bounce.
        assert abs(future.ltp - spot.ltp * basis) <= 1.5 * (spot.tick_size * basis + future.tick_size) + 1e-6
    assert spot.day_high > spot.day_low, "100 minutes of NIFTY moved more than one tick"


def test_walks_move_with_time_not_with_ticks(catalog: Catalog) -> None:
    market, clock = _market(catalog, seed=2)
    book = market.book("IDX_I", 13)
    for _ in range(5000):  # a burst at one instant: bounce only
        book.tick(clock.t)
    assert book.day_high - book.day_low <= 2 * book.tick_size + 1e-6
    for _ in range(2000):  # ~2.3 hours: a visible but bounded move (daily band +-10 %)
        clock.t += 4.0
        book.tick(clock.t)
    assert 0.9 * 25_900 <= book.day_low < book.day_high <= 1.1 * 25_900
    assert book.day_high - book.day_low > 10 * book.tick_size


def test_unknown_ids_walk_from_100(catalog: Catalog) -> None:
    market, clock = _market(catalog)
    cash, fno = market.book("BSE_EQ", 3_999_999_999), market.book("NSE_FNO", 3_999_999_998)
    for book in (cash, fno):
        assert book.prev_close == 100.0 and abs(book.ltp - 100.0) <= 0.1
    assert fno.is_derivative and fno.oi > 0 and not cash.is_derivative
    for _ in range(500):
        clock.t += 1.0
        cash.tick(clock.t)
        _check_book(cash)
    assert 90.0 <= cash.ltp <= 110.0


@pytest.mark.parametrize("lot", [1, 65, 70_000, 10_000_000])
def test_any_lot_size_fits_the_packet_fields(lot: int) -> None:
    """BSE debt lists lots of 10,000,000 and some stock F&O lots pass 65,535 (LTQ is a uint16)."""
    contract = Contract("BSE_FNO", 77, "future", "stock", "ODD", "ODD", 0.05, lot, 101.0, expiry_ts=START + 86_400)
    market, clock = _market(Catalog([contract], TRADING_DATE))
    book = market.book("BSE_FNO", 77)
    errors = ProtocolErrors()
    for _ in range(2000):
        clock.t += 1.0
        book.tick(clock.t)
        for packet in (book.full_packet(), book.quote_packet(), book.oi_packet(), book.prev_close_packet()):
            assert len(decode_frame(packet, errors)) == 1
        assert 0 < book.ltq <= 0xFFFF
    assert errors.malformed == 0


def test_volume_saturates_instead_of_wrapping(catalog: Catalog) -> None:
    market, clock = _market(catalog)
    book = market.book("NSE_EQ", 2885)
    book.volume = 2**31 - 3
    for _ in range(50):
        book.tick(clock.t)
    assert book.volume <= 2**31 - 1
    decode_frame(book.full_packet(), ProtocolErrors())  # still encodable
    assert not math.isnan(book.atp)


def test_option_fair_value_is_option_price_on_the_current_forward(catalog: Catalog) -> None:
    """Book._fair folds forward, smile and Black-76 into one function: the same floats as
    option_price on the forward (spot * e^(carry T), or the MCX future's own price)."""
    market, clock = _market(catalog, seed=4)
    options = [c for c in catalog.contracts() if c.kind == "option"]
    assert any(c.asset == "commodity" for c in options)
    books = [market.book(*c.key) for c in options]
    for step in (0.0, 1.0, 900.0, 86_400.0, 30 * 86_400.0):  # the last one passes some expiries
        clock.t += step
        for c, book in zip(options, books, strict=False):
            assert c.expiry_ts is not None and c.strike is not None
            fair = book._fair(clock.t)
            years = max(MIN_EXPIRY_YEARS, (c.expiry_ts - clock.t) / YEAR_SECONDS)
            future = catalog.future_for_option(c) if c.asset == "commodity" else None
            if future is not None:
                forward = market.book(*future.key)._fair(clock.t)
            else:
                carry = gen.MCX_CARRY if c.asset == "commodity" else gen.RISK_FREE_RATE
                forward = market.walk(c.asset, c.underlying).at(clock.t) * math.exp(carry * years)
            vol = market._vol(c.asset, c.underlying)
            assert fair == option_price(forward, c.strike, years, vol, gen.RISK_FREE_RATE, c.is_call), c.symbol


def _low_priced() -> Contract:
    """A stock at 4 ticks: its lower bid levels are empty."""
    return Contract("NSE_EQ", 424_242, "equity", "stock", "LOW", "LOW", 0.05, 1, 0.2)


def test_full_packets_are_the_depth_property_encoded(catalog: Catalog) -> None:
    """full_packet packs the depth values itself: the same bytes as encode_full(depth)."""
    market, clock = _market(Catalog([*catalog.contracts(), _low_priced()], TRADING_DATE))
    rng = random.Random(8)
    books = [market.book(*c.key) for c in rng.sample(list(catalog.contracts()), 400)] + [market.book("NSE_EQ", 424_242)]
    low_bids = 0
    for _ in range(20):
        clock.t += 60.0
        for book in books:
            book.tick(clock.t)
            low_bids += book.depth[4][0] == 0
            for volume in (None, 12_345_678):
                assert book.full_packet(volume) == encode_full(
                    book.segment, book.security_id, book.ltp, book.ltq, book.ltt, book.atp,
                    book.volume if volume is None else volume, book.total_sell_qty, book.total_buy_qty, book.oi,
                    book.day_high_oi, book.day_low_oi, book.day_open, book.ltp, book.day_high, book.day_low, book.depth,
                )  # fmt: skip
    assert low_bids > 0, "the path with empty bid levels ran"


def test_same_seed_same_packets(catalog: Catalog) -> None:
    contracts = random.Random(3).sample(list(catalog.contracts()), 200)
    runs = []
    for _ in range(2):
        market, clock = _market(catalog, seed=99)
        books = [market.book(*c.key) for c in contracts]
        out = [b.prev_close_packet() for b in books]
        for step in range(3000):
            clock.t += 0.5 if step % 7 == 0 else 0.0
            book = books[step * 37 % len(books)]
            book.tick(clock.t)
            out += [book.full_packet(), book.quote_packet(), book.oi_packet(), book.ticker_packet()]
        runs.append(out)
    assert runs[0] == runs[1]


def test_pre_drawn_randomness_keeps_the_distributions(catalog: Catalog) -> None:
    """Per-tick draws come from shared tables cycled per book: trades of 1..max_lots lots,
    buy-qty steps that cancel over a cycle (no drift), no bounce for options, OI steps
    only for derivatives."""
    market, _ = _market(catalog)
    kinds: dict[str, Book | None] = {"option": None, "future": None, "equity": None, "index": None}
    for c in catalog.contracts():
        if kinds.get(c.kind, 1) is None:
            kinds[c.kind] = market.book(*c.key)
    for kind, book in kinds.items():
        assert book is not None
        table = book._draws
        assert sum(row[2] for row in table) == 0
        assert {row[2] for row in table} == set(range(-10, 11))
        assert {row[0] for row in table} == ({0} if kind == "option" else {-1, 0, 1})
        assert (max(row[1] for row in table) > 0) == book.is_derivative
        assert {row[3] for row in table} == {0, 1} and {row[4] for row in table} == {1, 2}
        lots = book._trade_lots
        assert len(lots) == len(table) and min(lots) == 1 and max(lots) * book.lot <= 0xFFFF
        assert sorted(lots)[len(lots) // 2] <= 1 + max(lots) / 4, "skewed towards small trades (median ~ max / 8)"


def test_oi_and_order_quantities_saturate_instead_of_wrapping(catalog: Catalog) -> None:
    market, clock = _market(catalog)
    book = market.book(*next(c.key for c in catalog.contracts() if c.kind == "future"))
    book.oi = book.day_high_oi = INT32_MAX - 3
    book.total_buy_qty = book.total_sell_qty = INT32_MAX - 3
    for _ in range(200):
        clock.t += 1.0
        book.tick(clock.t)
        assert book.oi == book.day_high_oi <= INT32_MAX
        assert book.lot <= book.total_buy_qty <= INT32_MAX and book.lot <= book.total_sell_qty <= INT32_MAX
    assert book.oi == INT32_MAX
    decode_frame(book.full_packet(), ProtocolErrors())  # still encodable
