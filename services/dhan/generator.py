"""Deterministic generator of a Dhan compact scrip master for a trading date.

Real equities and indices (ids, symbols, names, lot sizes) come from the extracts in
./seed; every derivative contract listed on the trading date is generated, following the
exchanges' expiry rules (expiry_rules.py), with the security id its contract always has
(contract_ids.py), so a contract keeps its id from one day's master to the next.
A sidecar CSV carries a previous close for every row, so a feed simulator can quote
any instrument of the master consistently.

Row formats follow Dhan's compact file (see the protocol reference): lot '65.0',
strike '25800.00000' (futures '-0.01000', MCX futures '0.00000'), tick in paise with
four decimals, expiry 'YYYY-MM-DD 14:30:00' (MCX 23:30:00).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Final, NamedTuple

from services.common import market_calendar as cal
from services.common.instruments import MASTER_SEGMENTS
from services.dhan import expiry_rules as rules
from services.dhan.contract_ids import DAILY_BLOCK_START, ContractIds, load_stock_codes
from services.dhan.master import PRICES_HEADER, InstrumentId, prices_sidecar
from services.dhan.synthetic import (
    INDEX_SPECS,
    MCX_CARRY,
    MCX_SPECS,
    RISK_FREE_RATE,
    GeneratorConfig,
    IndexSpec,
    McxSpec,
    black76,
    round_to,
    scale_of,
    smile_vol,
    stock_vol,
    underlying_price,
)

log = logging.getLogger(__name__)

SEED_DIR: Final = Path(__file__).resolve().parent / "seed"
EQUITIES_CSV: Final = SEED_DIR / "dhan-scrip-master-equities-indices-2026-07.csv"
STOCK_FUTURES_CSV: Final = SEED_DIR / "dhan-scrip-master-detailed-stock-futures-2025-07.csv"

HEADER: Final = (
    "SEM_EXM_EXCH_ID", "SEM_SEGMENT", "SEM_SMST_SECURITY_ID", "SEM_INSTRUMENT_NAME",
    "SEM_EXPIRY_CODE", "SEM_TRADING_SYMBOL", "SEM_LOT_UNITS", "SEM_CUSTOM_SYMBOL",
    "SEM_EXPIRY_DATE", "SEM_STRIKE_PRICE", "SEM_OPTION_TYPE", "SEM_TICK_SIZE",
    "SEM_EXPIRY_FLAG", "SEM_EXCH_INSTRUMENT_TYPE", "SEM_SERIES", "SM_SYMBOL_NAME",
)  # fmt: skip

# Above every real id in the extracts (max 977,905 in July 2026); generation fails if a
# newer extract reaches it (see contract_ids for the layout above it).
DERIVATIVE_ID_START: Final = DAILY_BLOCK_START

# Strike steps a stock may get, in rupees (NSE uses these intervals).
STOCK_STEPS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 250.0, 500.0)
# Stock chains are denser and wider than NSE's (~0.5% steps, out to +-45%) so that a
# full master reaches the ~250k rows of the real file with only the underlyings this
# generator covers (no currency, no other commodities, no BSE stock options).
STOCK_STEP_FRACTION: Final = 0.005
STOCK_NEAR_PCT: Final = 0.15
STOCK_FAR_PCT: Final = 0.45
STOCK_OPTION_TICK_PAISE: Final = 5
INDEX_OPTION_TICK_PAISE: Final = 5


@dataclass(frozen=True)
class FnoStock:
    symbol: str
    security_id: int  # NSE_EQ id (UNDERLYING_SECURITY_ID of its derivatives)
    lot: int
    fut_tick_paise: int


@dataclass(frozen=True)
class _Profile:
    """What a scale includes; grid_factor shrinks every strike range."""

    index_symbols: tuple[str, ...]
    index_expiry_limit: int | None
    stock_symbols: tuple[str, ...] | None  # None: every F&O stock
    mcx_symbols: tuple[str, ...]
    grid_factor: float
    equity_limit: int | None  # NSE EQ-series equities kept besides the chosen stocks


_PROFILES: Final[Mapping[str, _Profile]] = MappingProxyType(
    {
        "full": _Profile(
            index_symbols=tuple(s.symbol for s in INDEX_SPECS),
            index_expiry_limit=None,
            stock_symbols=None,
            mcx_symbols=tuple(s.symbol for s in MCX_SPECS),
            grid_factor=1.0,
            equity_limit=None,
        ),
        "small": _Profile(
            index_symbols=("NIFTY", "BANKNIFTY"),
            index_expiry_limit=2,
            stock_symbols=("RELIANCE", "HDFCBANK", "INFY", "TCS", "SBIN"),
            mcx_symbols=("CRUDEOIL",),
            grid_factor=0.3,
            equity_limit=200,
        ),
    }
)


def _years_to(expiry: date, trading_date: date) -> float:
    # Half a day on expiry day keeps some time value in a same-day contract.
    return ((expiry - trading_date).days + 0.5) / 365.0


def _tick_price(value: float, tick_paise: int) -> float:
    """Rounded to the tick, never below one tick (exchanges quote nothing lower)."""
    tick = tick_paise / 100.0
    return max(tick, round_to(value, tick))


# --- strike grids ---------------------------------------------------------------------


def strike_grid(spot: float, near_step: float, far_step: float, near_pct: float, far_pct: float) -> list[float]:
    """Multiples of near_step within +-near_pct of spot, of far_step out to +-far_pct."""
    strikes: set[float] = set()
    for step, pct in ((near_step, near_pct), (far_step, far_pct)):
        lo = max(1, math.ceil(spot * (1 - pct) / step))
        hi = math.floor(spot * (1 + pct) / step)
        strikes.update(float(i * step) for i in range(lo, hi + 1))
    return sorted(strikes)


def _index_range_factor(symbol: str, expiry: date, flag: str) -> float:
    """Weeklies and serial monthlies list a narrow band, contracts of an index's quarterly
    and half-yearly cycle (its Mar/Jun/Sep/Dec expiries, listed months ahead) a wide one.
    Fixed for a contract's life (spot is the fixed previous close too), so a strike once
    listed stays listed until expiry, with its id."""
    if flag == "M" and rules.expiry_rule(symbol).quarterly_count and expiry.month in rules.QUARTER_MONTHS:
        return 1.5
    return 0.5


def stock_step(price: float) -> float:
    """Largest standard strike interval not above ~0.5% of price."""
    target = price * STOCK_STEP_FRACTION
    return max((s for s in STOCK_STEPS if s <= target), default=STOCK_STEPS[0])


# --- seed extracts --------------------------------------------------------------------


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, [row for row in reader if row]


def load_equity_rows() -> list[list[str]]:
    """Equity and index rows of the extract, in file order, numbers normalised."""
    header, rows = _read_csv(EQUITIES_CSV)
    if tuple(header) != HEADER:
        raise ValueError(f"unexpected header in {EQUITIES_CSV.name}")
    return [_normalise_seed_row(r) for r in rows]


def _normalise_seed_row(row: list[str]) -> list[str]:
    # The extract was re-saved by a spreadsheet ('1', '0.05'); Dhan writes '1.0', '0.0500'.
    out = list(row)
    out[6] = f"{float(row[6]):.1f}"
    out[11] = f"{float(row[11]):.4f}"
    return out


def _parse_ddmmyy(text: str) -> date:
    return datetime.strptime(text, "%d/%m/%y").date()


def load_fno_stocks(equity_rows: Sequence[list[str]]) -> list[FnoStock]:
    """F&O stocks of the futures extract, by symbol; lot and tick of each stock's latest
    expiry. Symbols come from the current equity row (renames: LTIM->LTM, ...); a stock
    whose NSE_EQ id is no longer listed is dropped."""
    nse_symbols = {int(r[2]): r[5] for r in equity_rows if r[0] == "NSE" and r[1] == "E"}
    _, rows = _read_csv(STOCK_FUTURES_CSV)
    latest: dict[int, tuple[date, int, int]] = {}
    for r in rows:
        if "NSETEST" in r[6] or r[4] != "FUTSTK":
            continue
        key, expiry = int(r[5]), _parse_ddmmyy(r[12])
        if key not in latest or expiry > latest[key][0]:
            latest[key] = (expiry, int(float(r[11])), int(float(r[15])))
    stocks = [
        FnoStock(nse_symbols[sid], sid, lot, tick) for sid, (_, lot, tick) in latest.items() if sid in nse_symbols
    ]
    return sorted(stocks, key=lambda s: s.symbol)


# --- rows -----------------------------------------------------------------------------


class Contract(NamedTuple):
    """One master row plus the feed segment and previous close it is quoted with."""

    row: list[str]
    segment: str
    price: float


def feed_segment(exchange: str, segment: str) -> str:
    """Dhan feed exchange segment of a master row ('NSE','D' -> 'NSE_FNO')."""
    return MASTER_SEGMENTS[(exchange, segment)]


def _strike_text(strike: float) -> str:
    """Strike as it appears inside symbols: '25800', '7.5'."""
    return str(int(strike)) if strike.is_integer() else f"{strike:.2f}".rstrip("0").rstrip(".")


# Month abbreviations as Dhan writes them; strftime('%b') would follow the locale.
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class _Chain:
    """Text shared by every row of one underlying and expiry, formatted once."""

    exchange: str  # NSE/BSE/MCX
    segment: str  # D or M
    symbol: str
    lot: str
    flag: str
    series: str  # MCX rows carry series '2' and the symbol name; NSE/BSE leave both empty
    symbol_name: str
    expiry_text: str  # '2026-11-24 14:30:00'
    symbol_month: str  # 'NIFTY-Nov2026' (MCX: 'CRUDEOIL-19Nov2026')
    custom_month: str  # 'NIFTY NOV' for futures
    custom_day_month: str  # 'NIFTY 24 NOV' for options

    @classmethod
    def make(cls, exchange: str, symbol: str, lot: str, expiry: date, flag: str) -> _Chain:
        mcx = exchange == "MCX"
        month = _MONTHS[expiry.month - 1]
        day = f"{expiry.day:02d}"
        return cls(
            exchange=exchange,
            segment="M" if mcx else "D",
            symbol=symbol,
            lot=lot,
            flag=flag,
            series="2" if mcx else "",
            symbol_name=symbol if mcx else "",
            expiry_text=f"{expiry.isoformat()} {'23:30:00' if mcx else '14:30:00'}",
            symbol_month=f"{symbol}-{day if mcx else ''}{month}{expiry.year}",
            custom_month=f"{symbol} {month.upper()}",
            custom_day_month=f"{symbol} {day} {month.upper()}",
        )


def _future_row(chain: _Chain, sid: str, instrument: str, tick_paise: int) -> list[str]:
    mcx = chain.exchange == "MCX"
    return [
        chain.exchange, chain.segment, sid, instrument, "0", f"{chain.symbol_month}-FUT", chain.lot,
        f"{chain.custom_month} FUT", chain.expiry_text, "0.00000" if mcx else "-0.01000", "XX",
        f"{tick_paise:.4f}", chain.flag, "FUTCOM" if mcx else "FUT", chain.series, chain.symbol_name,
    ]  # fmt: skip


def _option_pair(
    chain: _Chain, sids: tuple[str, str], instrument: str, strike: float, tick: str
) -> tuple[list[str], list[str]]:
    """CE and PE rows of one strike; `tick` is the formatted tick size."""
    k = _strike_text(strike)
    strike_text = f"{strike:.5f}"
    exch_type = "OPTFUT" if chain.exchange == "MCX" else "OP"
    ce = [
        chain.exchange, chain.segment, sids[0], instrument, "0", f"{chain.symbol_month}-{k}-CE", chain.lot,
        f"{chain.custom_day_month} {k} CALL", chain.expiry_text, strike_text, "CE", tick, chain.flag,
        exch_type, chain.series, chain.symbol_name,
    ]  # fmt: skip
    pe = ce.copy()
    pe[2], pe[10] = sids[1], "PE"
    pe[5], pe[7] = f"{chain.symbol_month}-{k}-PE", f"{chain.custom_day_month} {k} PUT"
    return ce, pe


def _option_chain(
    chain: _Chain,
    ids: ContractIds,
    expiry: date,
    instrument: str,
    strikes: Iterable[float],
    forward: float,
    t: float,
    base_vol: float,
    tick_paise: int,
) -> Iterator[Contract]:
    """CE and PE at each strike, ascending; Black-76 prices with the smile."""
    seg = feed_segment(chain.exchange, chain.segment)
    tick = f"{tick_paise:.4f}"
    for strike in strikes:
        call, put = black76(forward, strike, t, smile_vol(base_vol, strike, forward, t), RISK_FREE_RATE)
        sids = (str(ids.of(expiry, "CE", strike)), str(ids.of(expiry, "PE", strike)))
        ce, pe = _option_pair(chain, sids, instrument, strike, tick)
        yield Contract(ce, seg, _tick_price(call, tick_paise))
        yield Contract(pe, seg, _tick_price(put, tick_paise))


def _index_contracts(spec: IndexSpec, profile: _Profile, config: GeneratorConfig) -> Iterator[Contract]:
    """FUTIDX on the serial monthlies, OPTIDX on every listed expiry."""
    spot = underlying_price(spec.symbol, config)
    ids = ContractIds.daily(spec.symbol)
    expiries = rules.expiries_for(spec.symbol, config.trading_date)[: profile.index_expiry_limit]
    futures_left = rules.expiry_rule(spec.symbol).monthly_count
    for expiry, flag in expiries:
        chain = _Chain.make(spec.exchange, spec.symbol, f"{spec.lot:.1f}", expiry, flag)
        t = _years_to(expiry, config.trading_date)
        forward = spot * math.exp(RISK_FREE_RATE * t)
        if flag == "M" and futures_left > 0:
            futures_left -= 1
            row = _future_row(chain, str(ids.of(expiry, "FUT")), "FUTIDX", spec.fut_tick_paise)
            yield Contract(row, feed_segment(spec.exchange, "D"), _tick_price(forward, spec.fut_tick_paise))
        factor = _index_range_factor(spec.symbol, expiry, flag) * profile.grid_factor
        near, far = spec.near_pct * factor, spec.far_pct * factor
        strikes = strike_grid(spot, spec.near_step, spec.far_step, near, far)
        yield from _option_chain(chain, ids, expiry, "OPTIDX", strikes, forward, t, spec.vol, INDEX_OPTION_TICK_PAISE)


def _stock_contracts(
    stock: FnoStock, profile: _Profile, config: GeneratorConfig, codes: Mapping[int, int]
) -> Iterator[Contract]:
    """FUTSTK + OPTSTK on the next 3 monthly expiries."""
    spot = underlying_price(stock.symbol, config)
    vol = stock_vol(stock.symbol, config)
    step = stock_step(spot)
    f = profile.grid_factor
    strikes = strike_grid(spot, step, 2 * step, STOCK_NEAR_PCT * f, STOCK_FAR_PCT * f)
    ids = ContractIds.stock(stock.symbol, stock.security_id, step, codes)
    for expiry, flag in rules.expiries_for(stock.symbol, config.trading_date):
        chain = _Chain.make("NSE", stock.symbol, f"{stock.lot:.1f}", expiry, flag)
        t = _years_to(expiry, config.trading_date)
        forward = spot * math.exp(RISK_FREE_RATE * t)
        row = _future_row(chain, str(ids.of(expiry, "FUT")), "FUTSTK", stock.fut_tick_paise)
        yield Contract(row, "NSE_FNO", _tick_price(forward, stock.fut_tick_paise))
        yield from _option_chain(chain, ids, expiry, "OPTSTK", strikes, forward, t, vol, STOCK_OPTION_TICK_PAISE)


def _mcx_contracts(spec: McxSpec, profile: _Profile, config: GeneratorConfig) -> Iterator[Contract]:
    """FUTCOM for the next 3 months, each followed by its OPTFUT chain if still alive."""
    spot = underlying_price(spec.symbol, config)
    ids = ContractIds.daily(spec.symbol)
    for fut_expiry in rules.mcx_future_expiries(spec.symbol, config.trading_date, rules.MCX_FUTURES_COUNT):
        fut_chain = _Chain.make("MCX", spec.symbol, "1.0", fut_expiry, "M")
        carry = math.exp(MCX_CARRY * _years_to(fut_expiry, config.trading_date))
        fut_price = _tick_price(spot * carry, spec.fut_tick_paise)
        fut_row = _future_row(fut_chain, str(ids.of(fut_expiry, "FUT")), "FUTCOM", spec.fut_tick_paise)
        yield Contract(fut_row, "MCX_COMM", fut_price)
        opt_expiry = rules.mcx_option_expiry(fut_expiry)
        if opt_expiry < config.trading_date:
            continue
        opt_chain = _Chain.make("MCX", spec.symbol, "1.0", opt_expiry, "M")
        pct = spec.range_pct * profile.grid_factor
        # Around spot, not the future's price: the carry moves that daily, and the strikes must not.
        strikes = strike_grid(spot, spec.step, spec.step, pct, pct)
        t = _years_to(opt_expiry, config.trading_date)
        yield from _option_chain(
            opt_chain, ids, opt_expiry, "OPTFUT", strikes, fut_price, t, spec.vol, spec.opt_tick_paise
        )


def _select_equities(rows: list[list[str]], profile: _Profile) -> list[list[str]]:
    """Full: every row. Small: all indices, the chosen stocks on NSE and BSE, and the
    first `equity_limit` NSE EQ-series equities of the file."""
    if profile.equity_limit is None:
        return rows
    chosen = set(profile.stock_symbols or ())
    picked: list[list[str]] = []
    budget = profile.equity_limit - len([r for r in rows if r[0] == "NSE" and r[1] == "E" and r[5] in chosen])
    for r in rows:
        if r[1] == "I" or (r[1] == "E" and r[5] in chosen and r[14] in ("EQ", "A")):
            picked.append(r)
        elif r[0] == "NSE" and r[1] == "E" and r[14] == "EQ" and budget > 0:
            budget -= 1
            picked.append(r)
    return picked


def _contracts(config: GeneratorConfig) -> Iterator[Contract]:
    """Every row of the master in file order, with its previous close."""
    profile = _PROFILES[config.scale]
    equity_rows = load_equity_rows()
    real_ids = frozenset(int(r[2]) for r in equity_rows) | _futures_extract_ids()
    if max(real_ids) >= DERIVATIVE_ID_START:
        raise ValueError(f"a real id ({max(real_ids)}) reaches the generated contracts' ids ({DERIVATIVE_ID_START}+)")
    codes = load_stock_codes()
    for row in _select_equities(equity_rows, profile):
        yield Contract(row, feed_segment(row[0], row[1]), underlying_price(row[5], config))
    for spec in INDEX_SPECS:
        if spec.symbol in profile.index_symbols:
            yield from _index_contracts(spec, profile, config)
    wanted = profile.stock_symbols
    for stock in load_fno_stocks(equity_rows):
        if wanted is None or stock.symbol in wanted:
            yield from _stock_contracts(stock, profile, config, codes)
    for mcx in MCX_SPECS:
        if mcx.symbol in profile.mcx_symbols:
            yield from _mcx_contracts(mcx, profile, config)


def _futures_extract_ids() -> frozenset[int]:
    _, rows = _read_csv(STOCK_FUTURES_CSV)
    return frozenset(int(r[2]) for r in rows)


def real_security_ids() -> frozenset[int]:
    """Every security id in the two extracts (equities, indices, 2025 stock futures)."""
    return frozenset(int(r[2]) for r in load_equity_rows()) | _futures_extract_ids()


# --- public API -----------------------------------------------------------------------


def generate_rows(config: GeneratorConfig) -> Iterator[list[str]]:
    """Master rows without the header, in a deterministic order."""
    return (c.row for c in _contracts(config))


def reference_prices(config: GeneratorConfig) -> dict[InstrumentId, float]:
    """(feed segment, security id) -> previous close in rupees, for every row."""
    return {(c.segment, int(c.row[2])): c.price for c in _contracts(config)}


def _temp_beside(target: Path) -> Path:
    """A temp file in the target's directory, so os.replace is an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; the master is meant to be read by other services
    os.close(fd)
    return Path(tmp)


def write_master(config: GeneratorConfig, path: Path) -> int:
    """Writes the master CSV and its prices sidecar atomically; returns data rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prices_path = prices_sidecar(path)
    tmp_master, tmp_prices = _temp_beside(path), _temp_beside(prices_path)
    try:
        count = 0
        prices: list[tuple[str, str, str]] = []
        with open(tmp_master, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(HEADER)
            for c in _contracts(config):
                writer.writerow(c.row)
                prices.append((c.segment, c.row[2], f"{c.price:.2f}"))
                count += 1
        with open(tmp_prices, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(PRICES_HEADER)
            writer.writerows(prices)
        # Sidecar first: whoever sees the new master also finds its prices.
        os.replace(tmp_prices, prices_path)
        os.replace(tmp_master, path)
    except BaseException:
        tmp_master.unlink(missing_ok=True)
        tmp_prices.unlink(missing_ok=True)
        raise
    return count


def cached_master(cache_dir: Path, trading_date: date, seed: int, scale: str) -> Path:
    """The master of (trading date, seed, scale) under ``cache_dir``, written with its sidecar
    unless both are there already: the registry and the simulator share it (and its ids)."""
    path = cache_dir / f"generated-{trading_date.isoformat()}-s{seed}-{scale}.csv"
    if not path.is_file() or not prices_sidecar(path).is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = write_master(GeneratorConfig(trading_date=trading_date, seed=seed, scale=scale_of(scale)), path)
        log.info("generated master", extra={"path": str(path), "rows": rows})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a Dhan compact scrip master.")
    parser.add_argument("--date", type=date.fromisoformat, default=None, help="trading date (default: today IST)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", choices=("full", "small"), default="full")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = GeneratorConfig(args.date or cal.today_ist(), args.seed, args.scale)
    started = time.perf_counter()
    rows = write_master(config, args.out)
    elapsed = time.perf_counter() - started
    sidecar = prices_sidecar(args.out)
    print(f"wrote {rows} rows to {args.out} and {sidecar} in {elapsed:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
