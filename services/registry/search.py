"""Instrument search: exact symbol first, then cash, index, futures and options of the
matching underlyings; derivative filters ("NIFTY 25800 CE", "RELIANCE FUT"); fuzzy fallback.
"""

from __future__ import annotations

import calendar
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rapidfuzz import fuzz, process

from services.dhan.master import InstrumentRecord
from services.registry.catalog import Catalog, UnderlyingGroup

_MONTHS = {name.upper(): number for number, name in enumerate(calendar.month_abbr) if name}
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_FUZZY_CUTOFF = 80.0
_FUZZY_LIMIT = 8


@dataclass(frozen=True)
class SearchFilter:
    segments: frozenset[str] = frozenset()
    instrument_types: frozenset[str] = frozenset()

    def accepts(self, record: InstrumentRecord) -> bool:
        return (not self.segments or record.segment in self.segments) and (
            not self.instrument_types or record.instrument_type in self.instrument_types
        )


@dataclass(frozen=True)
class SearchPage:
    records: list[InstrumentRecord]
    total: int


def search(catalog: Catalog, query: str, where: SearchFilter, offset: int, limit: int) -> SearchPage:
    text = " ".join(query.upper().split())
    tokens = text.split(" ")
    group = catalog.groups.get(tokens[0])
    if len(tokens) > 1 and group is not None and not catalog.owners_of_name_prefix(text):
        return _page(_filtered_derivatives(group, tokens[1:], where), offset, limit)

    exact = [r for r in catalog.by_symbol.get(text, ()) if where.accepts(r)]
    groups = _matching_groups(catalog, text)
    prefixed = catalog.derivatives_with_prefix(text) if "-" in text else []
    if not exact and not groups and not prefixed:
        groups = _fuzzy_groups(catalog, text)

    exact_keys = {r.key for r in exact}
    total = len(exact) + sum(_count(g, where) for g in groups) - _overlap(exact, groups)
    ordered = itertools.chain(
        exact,
        (
            record
            for kind in range(4)
            for g in groups
            for record in g.by_kind[kind]
            if record.key not in exact_keys and where.accepts(record)
        ),
    )
    if prefixed:
        grouped = {g.symbol for g in groups}
        extra = [
            r for r in prefixed if r.key not in exact_keys and r.underlying_symbol not in grouped and where.accepts(r)
        ]
        total += len(extra)
        ordered = itertools.chain(ordered, extra)
    return SearchPage(list(itertools.islice(ordered, offset, offset + limit)), total)


def _matching_groups(catalog: Catalog, text: str) -> list[UnderlyingGroup]:
    """Underlyings whose symbol or a word of whose name starts with the query; exact first."""
    symbols = catalog.symbols_with_prefix(text)
    symbols.sort(key=lambda s: (s != text, len(s), s))
    ordered = dict.fromkeys(symbols)
    for owner in catalog.owners_of_name_prefix(text):
        ordered.setdefault(owner)
    return [catalog.groups[s] for s in ordered]


def _fuzzy_groups(catalog: Catalog, text: str) -> list[UnderlyingGroup]:
    candidates = catalog.fuzzy_candidates(text)
    choices = {position: catalog.fuzzy_choices[position] for position in candidates}
    matches = process.extract(text, choices, scorer=fuzz.WRatio, limit=_FUZZY_LIMIT * 2, score_cutoff=_FUZZY_CUTOFF)
    # Best score first; equal scores keep catalog order so results are stable.
    matches.sort(key=lambda match: (-match[1], match[2]))
    owners = dict.fromkeys(catalog.fuzzy_owners[position] for _, _, position in matches)
    return [catalog.groups[s] for s in itertools.islice(owners, _FUZZY_LIMIT)]


def _count(group: UnderlyingGroup, where: SearchFilter) -> int:
    return sum(
        n
        for (_, segment, instrument_type), n in group.counts.items()
        if (not where.segments or segment in where.segments)
        and (not where.instrument_types or instrument_type in where.instrument_types)
    )


def _overlap(exact: list[InstrumentRecord], groups: list[UnderlyingGroup]) -> int:
    symbols = {g.symbol for g in groups}
    return sum(1 for r in exact if r.underlying_symbol in symbols)


def _token_check(token: str) -> Callable[[InstrumentRecord], bool]:
    """What one search token asks of a derivative: CE/PE, FUT, a month, a day, a strike or a name part."""
    if token in ("CE", "CALL", "PE", "PUT"):
        wanted = "CE" if token in ("CE", "CALL") else "PE"
        return lambda r: r.option_type == wanted
    if token in ("FUT", "FUTURE", "FUTURES"):
        return lambda r: r.is_future
    if token[:3] in _MONTHS and token.isalpha():
        month = _MONTHS[token[:3]]
        return lambda r: r.expiry is not None and r.expiry.month == month
    if _NUMBER.match(token):
        value = float(token)
        if value.is_integer() and 1 <= value <= 31:
            day = int(value)
            return lambda r: r.expiry is not None and r.expiry.day == day
        return lambda r: r.strike == value
    return lambda r: token in r.display_name.upper() or token in r.trading_symbol.upper()


def _filtered_derivatives(group: UnderlyingGroup, tokens: list[str], where: SearchFilter) -> Iterator[InstrumentRecord]:
    """Derivatives of one underlying narrowed by strike, CE/PE, FUT, month or day tokens."""
    checks: list[Callable[[InstrumentRecord], bool]] = []
    candidates: list[InstrumentRecord] | None = None
    for token in tokens:
        if _NUMBER.match(token) and candidates is None and float(token) in group.by_strike:
            candidates = group.by_strike[float(token)]
        else:
            checks.append(_token_check(token))
    pool = candidates if candidates is not None else [*group.by_kind[2], *group.by_kind[3]]
    return (r for r in pool if where.accepts(r) and all(check(r) for check in checks))


def _page(records: Iterator[InstrumentRecord], offset: int, limit: int) -> SearchPage:
    matches = list(records)
    return SearchPage(matches[offset : offset + limit], len(matches))
