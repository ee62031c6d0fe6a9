"""Security ids of generated contracts: the same contract keeps its id in every daily master,
and an id never names another contract (issue 12 §3)."""

from __future__ import annotations

import itertools
from datetime import date
from pathlib import Path
from typing import Literal

import pytest

from services.common import market_calendar as cal
from services.dhan import contract_ids as ids
from services.dhan import generator as gen
from services.dhan.contract_ids import ContractIds
from services.dhan.synthetic import GeneratorConfig

# Fri 20 Nov, Mon 23 Nov (NIFTY's November monthly: Tuesday the 24th is a holiday), then
# Wed 25 Nov after the holiday, Thu 26 Nov (BSE's monthly), Fri 27 Nov.
DAYS = (date(2026, 11, 20), date(2026, 11, 23), date(2026, 11, 25), date(2026, 11, 26), date(2026, 11, 27))

ContractKey = tuple[str, str, str, str, str, str]


def _contracts(day: date) -> dict[int, ContractKey]:
    """id -> (exchange, instrument, trading symbol, expiry, strike, option type) of every derivative."""
    out: dict[int, ContractKey] = {}
    for row in gen.generate_rows(GeneratorConfig(day)):
        if row[1] in ("D", "M"):
            sid = int(row[2])
            assert sid not in out, f"{day}: id {sid} is in the master twice"
            out[sid] = (row[0], row[3], row[5], row[8], row[9], row[10])
    return out


@pytest.fixture(scope="module")
def masters() -> dict[date, dict[int, ContractKey]]:
    return {day: _contracts(day) for day in DAYS}


def test_the_days_cross_a_holiday_and_expiries() -> None:
    assert [cal.next_trading_day(d) for d in DAYS[:-1]] == list(DAYS[1:])
    assert not cal.is_trading_day(date(2026, 11, 24))


def test_a_contract_keeps_its_id_and_an_id_keeps_its_contract_across_days(
    masters: dict[date, dict[int, ContractKey]],
) -> None:
    contract_of: dict[int, ContractKey] = {}
    id_of: dict[ContractKey, int] = {}
    for day, contracts in masters.items():
        for sid, key in contracts.items():
            assert contract_of.setdefault(sid, key) == key, f"{day}: id {sid} was {contract_of[sid]}, now {key}"
            assert id_of.setdefault(key, sid) == sid, f"{day}: {key} was id {id_of[key]}, now {sid}"


def test_expired_contracts_roll_off_and_survivors_stay_listed(masters: dict[date, dict[int, ContractKey]]) -> None:
    for today, tomorrow in itertools.pairwise(DAYS):
        before, after = masters[today], masters[tomorrow]
        expired = {sid for sid, key in before.items() if key[3][:10] < tomorrow.isoformat()}
        assert not expired & set(after)
        survivors = set(before) - expired
        assert survivors <= set(after), f"{tomorrow}: listed contracts vanished before expiry"
    # NIFTY's November monthly expired on the 23rd (the 24th is a holiday); a new weekly came in.
    nov23 = {sid for sid, key in masters[date(2026, 11, 23)].items() if key[3].startswith("2026-11-23")}
    assert nov23 and not nov23 & set(masters[date(2026, 11, 25)])
    assert set(masters[date(2026, 11, 25)]) - set(masters[date(2026, 11, 23)])


def test_ids_stay_in_their_blocks_above_every_real_id(masters: dict[date, dict[int, ContractKey]]) -> None:
    every = set(itertools.chain.from_iterable(masters.values()))
    assert not every & gen.real_security_ids()
    assert max(gen.real_security_ids()) < ids.DAILY_BLOCK_START <= min(every)
    assert max(every) < ids.MONTHLY_BLOCK_END < 2**31
    assert not {i for i in every if ids.DAILY_BLOCK_END <= i < ids.MONTHLY_BLOCK_START}


def test_the_layout_is_injective_over_its_digits() -> None:
    seen: dict[int, tuple[object, ...]] = {}
    expiries = (date(2024, 1, 1), date(2026, 12, 29), date(2026, 12, 30), date(2046, 6, 5))
    for name in ids.DAILY_UNDERLYINGS:
        chain = ContractIds.daily(name)
        unit = chain.unit
        kinds: tuple[Literal["CE", "PE"], ...] = ("CE", "PE")
        for expiry, k, kind in itertools.product(expiries, (1, 2, 2047), kinds):
            key = (name, expiry, k, kind)
            assert seen.setdefault(chain.of(expiry, kind, k * unit), key) == key
        for expiry in expiries:
            assert seen.setdefault(chain.of(expiry, "FUT"), (name, expiry)) == (name, expiry)
    codes = {100 + c: c for c in (0, 1, ids.STOCK_CODES - 1)}
    for sid, expiry, k, kind in itertools.product(codes, expiries[:3], (1, 1023), ("CE", "PE")):
        chain = ContractIds.stock(f"S{sid}", sid, 2.5, codes)
        key = (sid, expiry.replace(day=1), k, kind)
        assert seen.setdefault(chain.of(expiry, kind, k * 2.5), key) == key
    assert all(ids.DAILY_BLOCK_START <= i < ids.MONTHLY_BLOCK_END for i in seen)


def test_digits_out_of_the_layout_are_refused() -> None:
    nifty = ContractIds.daily("NIFTY")
    with pytest.raises(ValueError, match="expiry day"):
        nifty.of(date(2023, 12, 29), "FUT")
    with pytest.raises(ValueError, match=r"not a positive multiple of its unit 50\.0"):
        nifty.of(date(2026, 12, 29), "CE", 25_925.0)
    with pytest.raises(ValueError, match="strike/unit 2048"):
        nifty.of(date(2026, 12, 29), "CE", 2048 * 50.0)
    with pytest.raises(ValueError, match="no contract-id code"):
        ContractIds.stock("NEWCO", 999_999, 1.0, {})


def test_every_fno_stock_has_an_allocated_code(tmp_path: Path) -> None:
    codes = ids.load_stock_codes()
    stocks = gen.load_fno_stocks(gen.load_equity_rows())
    assert {s.security_id for s in stocks} <= set(codes)
    bad = tmp_path / "codes.csv"
    bad.write_text("underlying_security_id,symbol,code\n7,AARTIIND,0\n13,ABB,0\n")
    with pytest.raises(ValueError, match=r"codes\.csv:3: .* allocated twice"):
        ids.load_stock_codes(bad)
