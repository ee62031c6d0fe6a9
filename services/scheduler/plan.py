"""The Tier B plan file: read, checked and turned into the SetTierBPlan request.

The plan lives in a TOML file (`tier_b_plan.toml` beside this module, or TIER_B_PLAN_FILE),
so a person changes what is always on without a release. Everything the file alone can
tell is checked here, at start-up, with the line of the mistake; whether the master lists
an underlying is known only when the subscription service applies the plan.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.config import ConfigError
from services.common.instruments import SEGMENT_TO_PROTO
from services.common.keys import Key, key_proto

SHIPPED_PLAN = Path(__file__).with_name("tier_b_plan.toml")

# The vocabulary a plan may name: the option-bearing indices with their index values, and
# the MCX commodities.
INDEX_VALUES: Mapping[str, Key] = {
    "NIFTY": ("IDX_I", 13),
    "BANKNIFTY": ("IDX_I", 25),
    "FINNIFTY": ("IDX_I", 27),
    "MIDCPNIFTY": ("IDX_I", 442),
    "NIFTYNXT50": ("IDX_I", 38),
    "SENSEX": ("IDX_I", 51),
    "BANKEX": ("IDX_I", 69),
}
MCX_COMMODITIES = frozenset(
    {"CRUDEOIL", "CRUDEOILM", "NATURALGAS", "NATGASMINI", "GOLD", "GOLDM", "SILVER", "SILVERM", "COPPER", "ZINC"}
)
MCX_SEGMENT = "MCX_COMM"
# Bounds the subscription service accepts (its own checks stay authoritative).
MAX_EXPIRIES = 50
MAX_FUTURES = 12
MAX_WIDTH = 200

_TABLES = {
    "defaults": {"strikes_each_side"},
    "index": {"underlying", "instrument", "nearest_expiries", "strikes_each_side"},
    "commodity": {"underlying", "nearest_futures", "nearest_expiries", "strikes_each_side"},
    "instrument": {"key"},
}


class PlanError(ConfigError):
    """The plan file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class _Source:
    """The file's text, to give a table's line to a mistake tomllib cannot see."""

    path: Path
    lines: list[str]

    def line_of(self, table: str, index: int) -> int:
        """The line of the `index`-th (from 0) header of `table` ([table] or [[table]])."""
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$")
        seen = -1
        for number, text in enumerate(self.lines, start=1):
            if header.match(text):
                seen += 1
                if seen == index:
                    return number
        return 0

    def fail(self, table: str, index: int, message: str) -> PlanError:
        return PlanError(f"{self.path}:{self.line_of(table, index)}: [{table}] {message}")


def load_plan(path: Path) -> pb.SetTierBPlanRequest:
    """The plan in `path`; PlanError naming the line when the file is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PlanError(f"cannot read the Tier B plan {path}: {error.strerror or error}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:  # its message carries the line and column
        raise PlanError(f"{path}: malformed TOML: {error}") from None
    return _build(document, _Source(path, text.splitlines()))


def default_plan(listed: set[str] | None = None) -> pb.SetTierBPlanRequest:
    """The shipped file's plan; with `listed`, only the chains whose underlying the master
    lists options for (a small test master lacks some)."""
    plan = load_plan(SHIPPED_PLAN)
    if listed is not None:
        kept = [c for c in plan.chains if c.underlying_symbol in listed]
        del plan.chains[:]
        plan.chains.extend(kept)
    return plan


def without_mcx(
    plan: pb.SetTierBPlanRequest, mcx_underlyings: Collection[str] = MCX_COMMODITIES
) -> pb.SetTierBPlanRequest:
    """The plan less its MCX chains and MCX instruments: what stays after the MCX close.
    `mcx_underlyings` names the chains that trade on MCX (a plan in force says so in its
    resolved chains; the file's vocabulary by default)."""
    mcx = SEGMENT_TO_PROTO[MCX_SEGMENT]
    return pb.SetTierBPlanRequest(
        chains=[c for c in plan.chains if c.underlying_symbol.strip().upper() not in mcx_underlyings],
        instruments=[i for i in plan.instruments if i.key.exchange_segment != mcx],
        dry_run=plan.dry_run,
    )


def _build(document: dict[str, Any], source: _Source) -> pb.SetTierBPlanRequest:
    for name, value in document.items():
        if name not in _TABLES:
            raise PlanError(f"{source.path}: unknown table [{name}]; accepted: {', '.join(sorted(_TABLES))}")
        if name == "defaults" and not isinstance(value, dict):
            raise PlanError(f"{source.path}: [defaults] must be a table")
        if name != "defaults" and not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
            raise PlanError(f"{source.path}: {name} must be written as [[{name}]] tables")
    defaults = document.get("defaults", {})
    _check_fields(source, "defaults", 0, defaults)
    width = _count(source, "defaults", 0, defaults, "strikes_each_side", 10, 1, MAX_WIDTH)
    plan = pb.SetTierBPlanRequest()
    seen: set[str] = set()
    instruments: list[Key] = []
    for n, table in enumerate(document.get("index", [])):
        chain, value = _index_chain(source, n, table, width)
        _once(source, "index", n, chain.underlying_symbol, seen)
        plan.chains.append(chain)
        instruments.append(value)
    for n, table in enumerate(document.get("commodity", [])):
        chain = _commodity_chain(source, n, table, width)
        _once(source, "commodity", n, chain.underlying_symbol, seen)
        plan.chains.append(chain)
    for n, table in enumerate(document.get("instrument", [])):
        _check_fields(source, "instrument", n, table)
        instruments.append(_key(source, "instrument", n, table.get("key")))
    for key in dict.fromkeys(instruments):  # each once, in file order
        plan.instruments.append(pb.TierBInstrument(key=key_proto(key)))
    return plan


def _index_chain(source: _Source, n: int, table: dict[str, Any], width: int) -> tuple[pb.TierBChain, Key]:
    _check_fields(source, "index", n, table)
    symbol = _underlying(source, "index", n, table, INDEX_VALUES.keys())
    value = _key(source, "index", n, table.get("instrument", _key_text(INDEX_VALUES[symbol])))
    chain = pb.TierBChain(
        underlying_symbol=symbol,
        nearest_expiries=_count(source, "index", n, table, "nearest_expiries", 1, 1, MAX_EXPIRIES),
        strikes_each_side=_count(source, "index", n, table, "strikes_each_side", width, 1, MAX_WIDTH),
        include_underlying=True,
    )
    return chain, value


def _commodity_chain(source: _Source, n: int, table: dict[str, Any], width: int) -> pb.TierBChain:
    _check_fields(source, "commodity", n, table)
    return pb.TierBChain(
        underlying_symbol=_underlying(source, "commodity", n, table, MCX_COMMODITIES),
        nearest_expiries=_count(source, "commodity", n, table, "nearest_expiries", 1, 1, MAX_EXPIRIES),
        strikes_each_side=_count(source, "commodity", n, table, "strikes_each_side", width, 1, MAX_WIDTH),
        nearest_futures=_count(source, "commodity", n, table, "nearest_futures", 1, 0, MAX_FUTURES),
        include_underlying=True,
    )


def _check_fields(source: _Source, table: str, n: int, fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - _TABLES[table])
    if unknown:
        accepted = ", ".join(sorted(_TABLES[table]))
        raise source.fail(table, n, f"unknown field {', '.join(unknown)}; accepted: {accepted}")


def _underlying(source: _Source, table: str, n: int, fields: dict[str, Any], known: Collection[str]) -> str:
    symbol = fields.get("underlying")
    if not isinstance(symbol, str) or not symbol.strip():
        raise source.fail(table, n, 'underlying is required, e.g. underlying = "NIFTY"')
    symbol = symbol.strip().upper()
    if symbol not in known:
        raise source.fail(table, n, f"unknown underlying {symbol!r}; accepted: {', '.join(sorted(known))}")
    return symbol


def _once(source: _Source, table: str, n: int, symbol: str, seen: set[str]) -> None:
    if symbol in seen:
        raise source.fail(table, n, f"{symbol} is planned twice")
    seen.add(symbol)


def _count(
    source: _Source, table: str, n: int, fields: dict[str, Any], name: str, default: int, low: int, high: int
) -> int:
    value = fields.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise source.fail(table, n, f"{name} = {value!r} must be a whole number, {low}..{high}")
    if not low <= value <= high:
        raise source.fail(table, n, f"{name} = {value} is out of range: accepted {low}..{high}")
    return value


def _key(source: _Source, table: str, n: int, text: Any) -> Key:
    """A key written "SEGMENT:security id", e.g. "IDX_I:13"."""
    match = re.fullmatch(r"\s*([A-Z_]+)\s*:\s*(\d+)\s*", text) if isinstance(text, str) else None
    if match is None or match.group(1) not in SEGMENT_TO_PROTO or int(match.group(2)) <= 0:
        raise source.fail(
            table,
            n,
            f'instrument key {text!r} is malformed: expected "SEGMENT:security id" with SEGMENT one of '
            f'{", ".join(sorted(SEGMENT_TO_PROTO))}, e.g. "IDX_I:13"',
        )
    return (match.group(1), int(match.group(2)))


def _key_text(key: Key) -> str:
    return f"{key[0]}:{key[1]}"
