"""Parsing Dhan's scrip master in both formats, from the real extracts."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import pytest

from services.dhan.master import (
    MasterFormatError,
    parse_master,
    underlying_of,
)

SEED = Path(__file__).resolve().parents[1] / "services" / "dhan" / "seed"
COMPACT_HEADER = (
    "SEM_EXM_EXCH_ID,SEM_SEGMENT,SEM_SMST_SECURITY_ID,SEM_INSTRUMENT_NAME,SEM_EXPIRY_CODE,SEM_TRADING_SYMBOL,"
    "SEM_LOT_UNITS,SEM_CUSTOM_SYMBOL,SEM_EXPIRY_DATE,SEM_STRIKE_PRICE,SEM_OPTION_TYPE,SEM_TICK_SIZE,"
    "SEM_EXPIRY_FLAG,SEM_EXCH_INSTRUMENT_TYPE,SEM_SERIES,SM_SYMBOL_NAME"
)


def test_compact_extract_parses_every_equity_and_index() -> None:
    with (SEED / "dhan-scrip-master-equities-indices-2026-07.csv").open(newline="") as handle:
        result = parse_master(handle)
    assert result.format_name == "compact"
    assert len(result.records) + len(result.rejected) == 23_116
    assert len(result.records) > 23_000
    by_key = {r.key: r for r in result.records}
    reliance = by_key[("NSE_EQ", 2885)]
    assert (reliance.trading_symbol, reliance.tick_size, reliance.lot_size) == ("RELIANCE", 0.10, 1.0)
    nifty = by_key[("IDX_I", 13)]
    assert nifty.instrument_type == "INDEX" and nifty.expiry is None and nifty.tick_size == 0.05
    assert by_key[("IDX_I", 51)].exchange == "BSE"


def test_detailed_extract_parses_futures_and_skips_test_rows() -> None:
    with (SEED / "dhan-scrip-master-detailed-stock-futures-2025-07.csv").open(newline="") as handle:
        result = parse_master(handle)
    assert result.format_name == "detailed"
    assert len(result.records) + len(result.rejected) == 662  # the README counts 661; the file has 662 rows
    assert all("NSETEST" in r.reason for r in result.rejected) and len(result.rejected) == 18
    future = next(r for r in result.records if r.trading_symbol == "RELIANCE-Jul2025-FUT")
    assert future.instrument_type == "FUTSTK" and future.underlying_symbol == "RELIANCE"
    assert future.expiry == date(2025, 7, 31) and future.lot_size == 500 and future.strike is None


def test_malformed_rows_are_counted_with_line_numbers_and_do_not_abort() -> None:
    rows = [
        COMPACT_HEADER,
        "NSE,E,2885,EQUITY,0,RELIANCE,1.0,Reliance Industries,,,,10.0000,NA,ES,EQ,RELIANCE INDUSTRIES LTD",
        "NSE,E,notanumber,EQUITY,0,BAD,1.0,Bad,,,,10.0000,NA,ES,EQ,BAD",
        "NSE,D,44430,OPTIDX,0,NIFTY-Nov2026-25800-CE,65.0,NIFTY 24 NOV 25800 CALL,"
        "2026-13-45 14:30:00,25800.00000,CE,5.0000,W,OP,,",
        "NSE,E,1,EQUITY,0,SHORT",
        "XYZ,E,5,EQUITY,0,ODD,1.0,Odd,,,,10.0000,NA,ES,EQ,ODD",
        "NSE,D,44431,OPTIDX,0,NIFTY-Nov2026-25800-XX,65.0,NIFTY,2026-11-24 14:30:00,25800.00000,XX,5.0000,W,OP,,",
        "NSE,E,2885,EQUITY,0,RELIANCE,1.0,Duplicate,,,,10.0000,NA,ES,EQ,DUP",
        "NSE,D,44432,OPTIDX,0,NIFTY-Nov2026-25850-PE,65.0,NIFTY 24 NOV 25850 PUT,"
        "2026-11-24 14:30:00,25850.00000,PE,5.0000,W,OP,,",
    ]
    result = parse_master(io.StringIO("\n".join(rows) + "\n"))
    assert [r.key for r in result.records] == [("NSE_EQ", 2885), ("NSE_FNO", 44432)]
    assert [r.line_number for r in result.rejected] == [3, 4, 5, 6, 7, 8]
    reasons = [r.reason for r in result.rejected]
    assert "not a number" in reasons[0] and "YYYY-MM-DD" in reasons[1] and "columns" in reasons[2]
    assert "exchange/segment" in reasons[3] and "option type" in reasons[4] and "duplicate" in reasons[5]
    option = result.records[1]
    assert option.underlying_symbol == "NIFTY" and option.strike == 25850 and option.tick_size == 0.05


def test_unrecognised_header_is_a_format_error() -> None:
    with pytest.raises(MasterFormatError):
        parse_master(io.StringIO("a,b,c\n1,2,3\n"))
    with pytest.raises(MasterFormatError):
        parse_master(io.StringIO(""))


@pytest.mark.parametrize(
    ("symbol", "kind", "underlying"),
    [
        ("NIFTY-Nov2026-25800-CE", "OPTIDX", "NIFTY"),
        ("BAJAJ-AUTO-Nov2026-FUT", "FUTSTK", "BAJAJ-AUTO"),
        ("CRUDEOIL-19Nov2026-FUT", "FUTCOM", "CRUDEOIL"),
        ("CRUDEOIL-17Nov2026-5400-CE", "OPTFUT", "CRUDEOIL"),
        ("M&M-Dec2026-3000-PE", "OPTSTK", "M&M"),
        ("NIFTY", "INDEX", "NIFTY"),
    ],
)
def test_underlying_is_derived_from_the_trading_symbol(symbol: str, kind: str, underlying: str) -> None:
    assert underlying_of(symbol, kind) == underlying
