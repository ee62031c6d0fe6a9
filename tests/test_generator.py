from __future__ import annotations

import csv
import hashlib
import itertools
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest

from services.common import market_calendar as cal
from services.dhan import expiry_rules as rules
from services.dhan import generator as gen
from services.dhan.generator import GeneratorConfig

TRADING_DATE = date(2026, 11, 21)
FULL = GeneratorConfig(TRADING_DATE)
SMALL = GeneratorConfig(TRADING_DATE, scale="small")
EXPECTED_HEADER = [
    "SEM_EXM_EXCH_ID", "SEM_SEGMENT", "SEM_SMST_SECURITY_ID", "SEM_INSTRUMENT_NAME",
    "SEM_EXPIRY_CODE", "SEM_TRADING_SYMBOL", "SEM_LOT_UNITS", "SEM_CUSTOM_SYMBOL",
    "SEM_EXPIRY_DATE", "SEM_STRIKE_PRICE", "SEM_OPTION_TYPE", "SEM_TICK_SIZE",
    "SEM_EXPIRY_FLAG", "SEM_EXCH_INSTRUMENT_TYPE", "SEM_SERIES", "SM_SYMBOL_NAME",
]  # fmt: skip
SEGMENTS = {
    ("NSE", "E"): "NSE_EQ", ("BSE", "E"): "BSE_EQ", ("NSE", "I"): "IDX_I", ("BSE", "I"): "IDX_I",
    ("NSE", "D"): "NSE_FNO", ("BSE", "D"): "BSE_FNO", ("MCX", "M"): "MCX_COMM",
}  # fmt: skip


@dataclass
class MasterSummary:
    """What the tests need from the full master, gathered in one streaming pass
    (holding 260k parsed rows would cost ~300 MB)."""

    header: list[str]
    returned_count: int
    rows: int = 0
    bad_widths: int = 0
    keys: set[tuple[str, int]] = field(default_factory=set)
    duplicate_keys: int = 0
    generated_ids: set[int] = field(default_factory=set)
    option_sides: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    # (underlying, expiry, option type) -> [(strike, (feed segment, security id))]
    chains: dict[tuple[str, str, str], list[tuple[float, tuple[str, int]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    special_rows: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    instruments: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lots: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    prices: dict[tuple[str, int], float] = field(default_factory=dict)


def _summarise(path: Path, prices_path: Path, returned: int) -> MasterSummary:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        summary = MasterSummary(header=next(reader), returned_count=returned)
        for row in reader:
            summary.rows += 1
            if len(row) != 16:
                summary.bad_widths += 1
                continue
            key = (SEGMENTS[(row[0], row[1])], int(row[2]))
            summary.duplicate_keys += key in summary.keys
            summary.keys.add(key)
            summary.instruments[row[3]] += 1
            if row[1] in ("D", "M"):
                summary.generated_ids.add(int(row[2]))
                underlying = row[5].split("-", 1)[0]
                summary.lots[underlying].add(row[6])
            if row[10] in ("CE", "PE"):
                underlying = row[5].split("-", 1)[0]
                summary.option_sides[(row[5].rsplit("-", 1)[0], row[8], row[9])].add(row[10])
                summary.chains[(underlying, row[8][:10], row[10])].append((float(row[9]), key))
            if key in (("NSE_EQ", 2885), ("IDX_I", 13), ("BSE_EQ", 500325)):
                summary.special_rows[key] = row
    with prices_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["EXCHANGE_SEGMENT", "SECURITY_ID", "PREVIOUS_CLOSE"]
        summary.prices = {(seg, int(sid)): float(price) for seg, sid, price in reader}
    return summary


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> MasterSummary:
    out = tmp_path_factory.mktemp("full") / "master.csv"
    returned = gen.write_master(FULL, out)
    return _summarise(out, out.with_name("master.prices.csv"), returned)


@pytest.fixture(scope="module")
def small_rows() -> list[list[str]]:
    return list(gen.generate_rows(SMALL))


@pytest.fixture(scope="module")
def small_prices() -> dict[tuple[str, int], float]:
    return gen.reference_prices(SMALL)


# --- full master ----------------------------------------------------------------------


def test_full_master_has_exact_header_and_16_columns(full: MasterSummary) -> None:
    assert full.header == EXPECTED_HEADER
    assert full.bad_widths == 0


def test_full_master_reaches_real_file_size(full: MasterSummary) -> None:
    assert full.rows >= 250_000
    assert full.returned_count == full.rows
    for instrument in ("EQUITY", "INDEX", "FUTIDX", "OPTIDX", "FUTSTK", "OPTSTK", "FUTCOM", "OPTFUT"):
        assert full.instruments[instrument] > 0, instrument


def test_keys_unique_and_generated_ids_never_collide_with_extract_ids(full: MasterSummary) -> None:
    assert full.duplicate_keys == 0
    assert not full.generated_ids & gen.real_security_ids()
    assert min(full.generated_ids) >= gen.DERIVATIVE_ID_START


def test_every_equity_and_index_of_the_extract_is_kept(full: MasterSummary) -> None:
    extract = {(SEGMENTS[(r[0], r[1])], int(r[2])) for r in gen.load_equity_rows()}
    assert len(extract) == 23_116
    assert extract <= full.keys


def test_real_rows_are_written_back_in_dhan_number_format(full: MasterSummary) -> None:
    assert full.special_rows[("NSE_EQ", 2885)] == [
        "NSE",
        "E",
        "2885",
        "EQUITY",
        "0",
        "RELIANCE",
        "1.0",
        "Reliance Industries",
        "",
        "",
        "",
        "10.0000",
        "NA",
        "ES",
        "EQ",
        "RELIANCE INDUSTRIES LTD",
    ]
    # Identical to the example row of the protocol reference.
    nifty = "NSE,I,13,INDEX,0,NIFTY,1.0,Nifty 50,0001-01-01,,XX,0.0500,,INDEX,X,NIFTY"
    assert full.special_rows[("IDX_I", 13)] == nifty.split(",")
    assert full.special_rows[("BSE_EQ", 500325)][5] == "RELIANCE"


def test_index_lot_sizes(full: MasterSummary) -> None:
    expected = {
        "NIFTY": "65.0", "BANKNIFTY": "30.0", "FINNIFTY": "60.0",
        "MIDCPNIFTY": "120.0", "SENSEX": "20.0", "BANKEX": "30.0",
    }  # fmt: skip
    for name, lot in expected.items():
        assert full.lots[name] == {lot}, name
    assert full.lots["RELIANCE"] == {"500.0"}  # from the stock-futures extract
    assert not any("NSETEST" in name for name in full.lots)


def test_every_option_strike_has_call_and_put(full: MasterSummary) -> None:
    assert full.option_sides
    assert all(sides == {"CE", "PE"} for sides in full.option_sides.values())


def test_nifty_options_listed_on_every_expiry_of_the_calendar(full: MasterSummary) -> None:
    listed = sorted({exp for (u, exp, _) in full.chains if u == "NIFTY"})
    assert listed == [d.isoformat() for d, _ in rules.expiries_for("NIFTY", TRADING_DATE)]
    sensex = {date.fromisoformat(exp) for (u, exp, _) in full.chains if u == "SENSEX"}
    assert sensex == {d for d, _ in rules.expiries_for("SENSEX", TRADING_DATE)}
    assert all(d.weekday() == cal.THURSDAY for d in sensex)


def test_nifty_strike_grid_is_finer_near_the_money(full: MasterSummary) -> None:
    strikes = sorted(k for k, _ in full.chains[("NIFTY", "2026-12-29", "CE")])
    spot = gen.underlying_price("NIFTY", FULL)
    gaps_near = {b - a for a, b in itertools.pairwise(strikes) if abs(a - spot) < 0.03 * spot}
    gaps_far = {b - a for a, b in itertools.pairwise(strikes) if abs(a - spot) > 0.10 * spot}
    assert gaps_near == {50.0}
    assert gaps_far == {100.0}
    assert min(strikes) < 0.85 * spot and max(strikes) > 1.15 * spot
    # A nearer weekly lists a narrower band than the far monthly.
    weekly = [k for k, _ in full.chains[("NIFTY", "2026-12-01", "CE")]]
    assert max(weekly) - min(weekly) < max(strikes) - min(strikes)


def test_sidecar_prices_cover_every_row_and_are_positive(full: MasterSummary) -> None:
    assert set(full.prices) == full.keys
    assert all(p > 0 for p in full.prices.values())
    assert full.prices[("IDX_I", 13)] == pytest.approx(25_900)
    assert full.prices[("NSE_EQ", 2885)] == pytest.approx(1_400)


def test_calls_fall_and_puts_rise_with_strike(full: MasterSummary) -> None:
    def prices(chain_key: tuple[str, str, str]) -> list[float]:
        return [full.prices[key] for _, key in sorted(full.chains[chain_key])]

    calls = prices(("NIFTY", "2026-12-29", "CE"))
    assert all(a >= b for a, b in itertools.pairwise(calls))
    assert calls[0] > calls[-1]
    for chain_key in full.chains:  # and every other chain, both sides
        values = prices(chain_key)
        if chain_key[2] == "PE":
            values.reverse()
        assert all(a >= b for a, b in itertools.pairwise(values)), chain_key


# --- small master, formats, determinism ----------------------------------------------


def test_small_scale_is_a_few_thousand_rows_with_the_essentials(small_rows: list[list[str]]) -> None:
    assert 1_000 <= len(small_rows) <= 10_000
    keys = {(r[0], r[1], r[2]) for r in small_rows}
    assert ("NSE", "E", "2885") in keys and ("NSE", "I", "13") in keys
    underlyings = {r[5].split("-", 1)[0] for r in small_rows if r[1] in ("D", "M")}
    assert underlyings == {"NIFTY", "BANKNIFTY", "RELIANCE", "HDFCBANK", "INFY", "TCS", "SBIN", "CRUDEOIL"}
    assert sum(1 for r in small_rows if r[1] == "I") == 191


def test_derivative_rows_match_the_reference_formats(small_rows: list[list[str]]) -> None:
    by_symbol = {(r[5], r[8]): r for r in small_rows}
    ce = by_symbol[("NIFTY-Nov2026-25900-CE", "2026-11-23 14:30:00")]
    assert ce[:2] == ["NSE", "D"] and int(ce[2]) >= gen.DERIVATIVE_ID_START
    assert ce[3:] == [
        "OPTIDX", "0", "NIFTY-Nov2026-25900-CE", "65.0", "NIFTY 23 NOV 25900 CALL", "2026-11-23 14:30:00",
        "25900.00000", "CE", "5.0000", "M", "OP", "", "",
    ]  # fmt: skip
    weekly = by_symbol[("NIFTY-Dec2026-25900-PE", "2026-12-01 14:30:00")]
    assert weekly[7] == "NIFTY 01 DEC 25900 PUT" and weekly[12] == "W"
    fut = by_symbol[("RELIANCE-Dec2026-FUT", "2026-12-29 14:30:00")]
    assert fut[3:] == [
        "FUTSTK", "0", "RELIANCE-Dec2026-FUT", "500.0", "RELIANCE DEC FUT", "2026-12-29 14:30:00",
        "-0.01000", "XX", "10.0000", "M", "FUT", "", "",
    ]  # fmt: skip
    crude = by_symbol[("CRUDEOIL-18Dec2026-FUT", "2026-12-18 23:30:00")]
    assert crude[:2] == ["MCX", "M"]
    assert crude[3:] == [
        "FUTCOM", "0", "CRUDEOIL-18Dec2026-FUT", "1.0", "CRUDEOIL DEC FUT", "2026-12-18 23:30:00",
        "0.00000", "XX", "100.0000", "M", "FUTCOM", "2", "CRUDEOIL",
    ]  # fmt: skip
    crude_opt = by_symbol[("CRUDEOIL-16Dec2026-5400-CE", "2026-12-16 23:30:00")]
    assert crude_opt[3] == "OPTFUT" and crude_opt[7] == "CRUDEOIL 16 DEC 5400 CALL"


def test_formats_of_every_small_row(small_rows: list[list[str]]) -> None:
    expiry = re.compile(r"^\d{4}-\d{2}-\d{2} (14:30:00|23:30:00)$")
    for r in small_rows:
        assert len(r) == 16
        assert re.fullmatch(r"\d+\.0", r[6]) and re.fullmatch(r"\d+\.\d{4}", r[11]), r
        if r[1] in ("D", "M"):
            assert expiry.match(r[8]) and r[12] in ("W", "M"), r
            assert re.fullmatch(r"-?\d+\.\d{5}", r[9]), r
            if r[10] in ("CE", "PE"):
                step_ok = float(r[9]) / 0.5
                assert step_ok == int(step_ok), r


def test_generation_is_deterministic(small_rows: list[list[str]], tmp_path: Path) -> None:
    assert list(gen.generate_rows(SMALL)) == small_rows
    a, b = tmp_path / "a" / "m.csv", tmp_path / "b" / "m.csv"
    gen.write_master(SMALL, a)
    gen.write_master(SMALL, b)
    for x, y in ((a, b), (a.with_name("m.prices.csv"), b.with_name("m.prices.csv"))):
        assert hashlib.sha256(x.read_bytes()).digest() == hashlib.sha256(y.read_bytes()).digest()


def test_a_different_seed_changes_prices(small_prices: dict[tuple[str, int], float]) -> None:
    other = gen.reference_prices(GeneratorConfig(TRADING_DATE, seed=8, scale="small"))
    assert other != small_prices
    # Fixed anchors stay put whatever the seed.
    assert other[("IDX_I", 13)] == small_prices[("IDX_I", 13)] == 25_900.0


def test_reference_prices_match_the_sidecar(small_prices: dict[tuple[str, int], float], tmp_path: Path) -> None:
    out = tmp_path / "master.csv"
    count = gen.write_master(SMALL, out)
    with out.with_name("master.prices.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    assert len(rows) == count == len(small_prices)
    assert {(s, int(i)): float(p) for s, i, p in rows} == pytest.approx(small_prices)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.csv", "master.prices.csv"]  # no temp files


def test_cli_writes_master_and_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "cli.csv"
    assert gen.main(["--date", "2026-11-21", "--seed", "7", "--scale", "small", "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == ",".join(EXPECTED_HEADER)
    assert (tmp_path / "cli.prices.csv").exists()


# --- building blocks ------------------------------------------------------------------


def test_underlying_levels() -> None:
    assert gen.underlying_price("NIFTY", FULL) == 25_900.0
    assert gen.underlying_price("SENSEX", FULL) == 84_500.0
    assert gen.underlying_price("CRUDEOIL", FULL) == 5_400.0
    levels = [gen.underlying_price(f"X{i}", FULL) for i in range(500)]
    assert all(50 <= p <= 10_000 for p in levels)
    assert gen.underlying_price("X1", FULL) == gen.underlying_price("X1", SMALL)  # per-symbol stream


def test_strike_grid_and_stock_steps() -> None:
    grid = gen.strike_grid(25_900, 50, 100, 0.06, 0.20)
    assert all(k % 50 == 0 for k in grid)
    assert all(k % 100 == 0 for k in grid if abs(k - 25_900) > 0.06 * 25_900)
    assert gen.stock_step(1_400) == 5.0
    assert gen.stock_step(60) == 0.5
    assert gen.stock_step(9_000) == 25.0
    stock = gen.strike_grid(1_400, 5, 10, 0.15, 0.45)
    assert stock[0] >= 1_400 * 0.55 and stock[-1] <= 1_400 * 1.45


def test_fno_stocks_from_extract() -> None:
    stocks = {s.symbol: s for s in gen.load_fno_stocks(gen.load_equity_rows())}
    assert stocks["RELIANCE"].security_id == 2885 and stocks["RELIANCE"].lot == 500
    assert "LTM" in stocks and "LTIM" not in stocks  # renamed since the 2025 extract
    assert not any("NSETEST" in s for s in stocks)
    assert len(stocks) > 200


def test_seed_files_live_next_to_the_module() -> None:
    assert gen.EQUITIES_CSV.parent == Path(gen.__file__).resolve().parent / "seed"
    assert gen.EQUITIES_CSV.exists() and gen.STOCK_FUTURES_CSV.exists()
