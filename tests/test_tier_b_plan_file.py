"""The Tier B plan file: the shipped seeds' plan, and every mistake named with its line."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataserver.common.v1 import common_pb2

from services.common.config import ConfigError, load_settings
from services.scheduler.plan import SHIPPED_PLAN, PlanError, default_plan, load_plan, without_mcx


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


def test_the_shipped_plan_is_the_seeds_plan() -> None:
    plan = default_plan()
    chains = {c.underlying_symbol: (c.nearest_expiries, c.strikes_each_side, c.nearest_futures) for c in plan.chains}
    assert chains == {
        "NIFTY": (15, 10, 0),
        "BANKNIFTY": (9, 10, 0),
        "SENSEX": (8, 10, 0),
        "FINNIFTY": (8, 10, 0),
        "MIDCPNIFTY": (8, 10, 0),
        "BANKEX": (8, 10, 0),
        "CRUDEOIL": (1, 10, 2),
        "NATURALGAS": (1, 10, 2),
    }
    assert all(c.include_underlying for c in plan.chains)
    values = [(i.key.exchange_segment, i.key.security_id) for i in plan.instruments]
    idx = common_pb2.EXCHANGE_SEGMENT_IDX_I
    assert values == [(idx, 13), (idx, 25), (idx, 51), (idx, 27), (idx, 442), (idx, 69), (idx, 21), (idx, 38)]
    assert load_plan(SHIPPED_PLAN) == plan
    assert [c.underlying_symbol for c in default_plan({"NIFTY", "CRUDEOIL"}).chains] == ["NIFTY", "CRUDEOIL"]


def test_without_mcx_drops_the_commodities_only() -> None:
    plan = default_plan()
    plan.instruments.add().key.CopyFrom(
        common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_MCX_COMM, security_id=4444)
    )
    after_close = without_mcx(plan)
    assert [c.underlying_symbol for c in after_close.chains] == [
        "NIFTY",
        "BANKNIFTY",
        "SENSEX",
        "FINNIFTY",
        "MIDCPNIFTY",
        "BANKEX",
    ]
    assert len(after_close.instruments) == len(plan.instruments) - 1


def test_defaults_and_instrument_keys(tmp_path: Path) -> None:
    plan = load_plan(
        write(
            tmp_path,
            '[defaults]\nstrikes_each_side = 4\n\n[[index]]\nunderlying = "nifty"\nnearest_expiries = 2\n\n'
            '[[commodity]]\nunderlying = "CRUDEOIL"\nstrikes_each_side = 6\n\n[[instrument]]\nkey = "NSE_EQ:2885"\n',
        )
    )
    assert [(c.underlying_symbol, c.nearest_expiries, c.strikes_each_side) for c in plan.chains] == [
        ("NIFTY", 2, 4),
        ("CRUDEOIL", 1, 6),
    ]
    assert plan.chains[1].nearest_futures == 1
    # The index value defaults to the underlying's own.
    assert [i.key.security_id for i in plan.instruments] == [13, 2885]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[[index]]\nunderlying = "NIFTY"\nnearest_expiries = \n', 3, "malformed TOML"),
        ('[[index]]\nunderlying = "NIFTY"\n\n[[index]]\nunderlying = "NIFTY50"\n', 4, "unknown underlying 'NIFTY50'"),
        ('[[commodity]]\nunderlying = "GOLDPETAL"\n', 1, "unknown underlying 'GOLDPETAL'"),
        ('# plan\n\n[[index]]\nunderlying = "NIFTY"\nstrikes_each_side = -1\n', 3, "strikes_each_side = -1"),
        ('[[index]]\nunderlying = "NIFTY"\nnearest_expiries = 51\n', 1, "accepted 1..50"),
        ('[defaults]\nstrikes_each_side = "ten"\n', 1, "must be a whole number"),
        ('[[commodity]]\nunderlying = "CRUDEOIL"\nnearest_futures = -2\n', 1, "nearest_futures = -2"),
        ('[[index]]\nunderlying = "NIFTY"\nwidth = 3\n', 1, "unknown field width"),
        ("[[index]]\nnearest_expiries = 3\n", 1, "underlying is required"),
        ('[[index]]\nunderlying = "NIFTY"\ninstrument = "IDX:13"\n', 1, "is malformed"),
        ('[[index]]\nunderlying = "SENSEX"\n[[index]]\nunderlying = "SENSEX"\n', 3, "planned twice"),
        ('[[instrument]]\nkey = "IDX_I:0"\n', 1, "is malformed"),
    ],
)
def test_a_bad_file_fails_naming_its_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PlanError) as raised:
        load_plan(path)
    message = str(raised.value)
    assert words in message and (f"{path}:{line}:" in message or f"line {line}" in message), message


def test_unknown_tables_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"unknown table \[chains\]"):
        load_plan(write(tmp_path, '[[chains]]\nunderlying = "NIFTY"\n'))
    with pytest.raises(PlanError, match="must be written as"):
        load_plan(write(tmp_path, '[index]\nunderlying = "NIFTY"\n'))
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "absent.toml")


def test_the_setting_names_the_file(tmp_path: Path) -> None:
    assert load_settings({}).tier_b_plan_file == SHIPPED_PLAN
    own = write(tmp_path, '[[index]]\nunderlying = "NIFTY"\n')
    assert load_settings({"TIER_B_PLAN_FILE": str(own)}).tier_b_plan_file == own
    with pytest.raises(ConfigError, match="TIER_B_PLAN_FILE"):
        load_settings({"TIER_B_PLAN_FILE": str(tmp_path / "absent.toml")})
