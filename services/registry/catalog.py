"""In-memory indexes over one loaded master: lookups, underlying groups, chain listings.

A Catalog is immutable once built; a reload builds a new one and swaps the reference, so
readers never see a half-loaded master.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date

from services.dhan.master import InstrumentId, InstrumentRecord

_CASH_SEGMENT_ORDER = {"NSE_EQ": 0, "BSE_EQ": 1}


@dataclass
class ChainListing:
    """Every listed strike of one underlying and expiry."""

    underlying_symbol: str
    expiry: date
    strikes: list[float] = field(default_factory=list)
    calls: dict[float, InstrumentRecord] = field(default_factory=dict)
    puts: dict[float, InstrumentRecord] = field(default_factory=dict)


@dataclass
class ExpiryInfo:
    expiry: date
    flag: str = ""
    has_options: bool = False
    has_futures: bool = False
    strike_count: int = 0


@dataclass
class UnderlyingGroup:
    """An underlying symbol and every instrument on it, in search order per kind."""

    symbol: str
    by_kind: tuple[list[InstrumentRecord], ...] = field(default_factory=lambda: ([], [], [], []))
    # (kind rank, segment, instrument type) -> count, so totals need no scan.
    counts: Counter[tuple[int, str, str]] = field(default_factory=Counter)
    expiries: dict[date, ExpiryInfo] = field(default_factory=dict)
    chains: dict[date, ChainListing] = field(default_factory=dict)
    by_strike: dict[float, list[InstrumentRecord]] = field(default_factory=dict)

    @property
    def feed_instrument(self) -> InstrumentRecord | None:
        """The instrument whose feed prices the underlying: index, cash, else nearest future."""
        cash, index, futures, _ = self.by_kind
        if index:
            return index[0]
        if cash:
            return cash[0]
        return futures[0] if futures else None

    @property
    def is_commodity(self) -> bool:
        """Known only by its contracts: no cash line and no index."""
        cash, index, _, _ = self.by_kind
        return not (cash or index)

    def future_for(self, expiry: date) -> InstrumentRecord | None:
        """The future an option of `expiry` settles on: the first expiring on or after it."""
        return self._exercised_into(expiry) or self.feed_instrument

    def listed_future(self, expiry: date) -> InstrumentRecord | None:
        """The future listed for the options of `expiry`, whose price is their forward: for an
        index or a stock the future expiring that same day (a weekly expiry has none); for a
        commodity the future its options exercise into."""
        if self.is_commodity:
            return self._exercised_into(expiry)
        return next((f for f in self.by_kind[2] if f.expiry == expiry), None)

    def _exercised_into(self, expiry: date) -> InstrumentRecord | None:
        return next((f for f in self.by_kind[2] if f.expiry is not None and f.expiry >= expiry), None)


def _order_key(record: InstrumentRecord) -> tuple[object, ...]:
    return (
        record.expiry or date.min,
        record.strike or 0.0,
        record.option_type,
        _CASH_SEGMENT_ORDER.get(record.segment, 2),
        record.segment,
        record.security_id,
    )


class Catalog:
    def __init__(self, records: list[InstrumentRecord], trading_date: date) -> None:
        self.trading_date = trading_date
        self.records = records
        self.by_key: dict[InstrumentId, InstrumentRecord] = {}
        self.by_symbol: dict[str, list[InstrumentRecord]] = defaultdict(list)
        self.groups: dict[str, UnderlyingGroup] = {}
        upper_symbols: list[str] = []
        for record in records:
            self.by_key[record.key] = record
            upper = record.trading_symbol.upper()
            upper_symbols.append(upper)
            self.by_symbol[upper].append(record)
            group = self.groups.get(record.underlying_symbol)
            if group is None:
                group = self.groups[record.underlying_symbol] = UnderlyingGroup(record.underlying_symbol)
            group.by_kind[record.kind_rank].append(record)
            group.counts[(record.kind_rank, record.segment, record.instrument_type)] += 1
        for matches in self.by_symbol.values():
            matches.sort(key=lambda r: (r.kind_rank, _order_key(r)))
        for group in self.groups.values():
            self._index_group(group)
        self._build_text_indexes(upper_symbols)

    def _index_group(self, group: UnderlyingGroup) -> None:
        for kind_records in group.by_kind:
            kind_records.sort(key=_order_key)
        for future in group.by_kind[2]:
            if future.expiry is not None:
                info = group.expiries.setdefault(future.expiry, ExpiryInfo(future.expiry))
                info.has_futures = True
                info.flag = info.flag or future.expiry_flag
        for option in group.by_kind[3]:
            assert option.expiry is not None and option.strike is not None  # parser guarantees
            group.by_strike.setdefault(option.strike, []).append(option)
            listing = group.chains.get(option.expiry)
            if listing is None:
                listing = group.chains[option.expiry] = ChainListing(group.symbol, option.expiry)
            side = listing.calls if option.option_type == "CE" else listing.puts
            side.setdefault(option.strike, option)
            info = group.expiries.setdefault(option.expiry, ExpiryInfo(option.expiry))
            info.has_options = True
            if option.expiry_flag == "M" or not info.flag:
                info.flag = option.expiry_flag
        for listing in group.chains.values():
            listing.strikes = sorted(listing.calls.keys() | listing.puts.keys())
            group.expiries[listing.expiry].strike_count = len(listing.strikes)

    def _build_text_indexes(self, upper_symbols: list[str]) -> None:
        # Prefix indexes as sorted parallel lists: compact, and bisect does the search.
        symbols = sorted(self.groups)
        self.group_symbols: list[str] = symbols
        names: list[tuple[str, str]] = []
        for group in self.groups.values():
            cash, index, _, _ = group.by_kind
            seen: set[str] = set()
            for record in (*cash, *index):
                name = record.display_name.upper()
                for start in _word_starts(name):
                    if name[start:] not in seen:
                        seen.add(name[start:])
                        names.append((name[start:], group.symbol))
        names.sort()
        self.name_keys: list[str] = [name for name, _ in names]
        self.name_owners: list[str] = [owner for _, owner in names]
        # Shares the upper-cased strings of by_symbol rather than making a third copy.
        derivatives = sorted(
            (upper_symbols[index], index) for index, record in enumerate(self.records) if record.kind_rank >= 2
        )
        self.derivative_symbols: list[str] = [symbol for symbol, _ in derivatives]
        self.derivative_positions: list[int] = [index for _, index in derivatives]
        # Fuzzy matching runs over underlyings that trade in cash or as an index.
        self.fuzzy_choices: list[str] = []
        self.fuzzy_owners: list[str] = []
        for group in self.groups.values():
            cash, index, _, _ = group.by_kind
            if cash or index:
                self.fuzzy_choices.append(group.symbol)
                self.fuzzy_owners.append(group.symbol)
                display = (cash or index)[0].display_name.upper()
                if display != group.symbol:
                    self.fuzzy_choices.append(display)
                    self.fuzzy_owners.append(group.symbol)
        self.fuzzy_trigrams: dict[str, array[int]] = defaultdict(lambda: array("I"))
        for position, choice in enumerate(self.fuzzy_choices):
            for gram in trigrams(choice):
                self.fuzzy_trigrams[gram].append(position)
        self.fuzzy_trigrams = dict(self.fuzzy_trigrams)

    def fuzzy_candidates(self, text: str) -> list[int]:
        """Choices sharing enough trigrams with `text` to be worth scoring: a typo keeps most
        of a word's trigrams, and scoring a few hundred choices beats scoring all of them."""
        grams = trigrams(text)
        hits: Counter[int] = Counter()
        for gram in grams:
            hits.update(self.fuzzy_trigrams.get(gram, ()))
        needed = max(1, len(grams) // 3)
        return sorted(position for position, count in hits.items() if count >= needed)

    def symbols_with_prefix(self, prefix: str) -> list[str]:
        start = bisect.bisect_left(self.group_symbols, prefix)
        end = bisect.bisect_left(self.group_symbols, prefix + "\uffff")
        return self.group_symbols[start:end]

    def owners_of_name_prefix(self, prefix: str) -> list[str]:
        start = bisect.bisect_left(self.name_keys, prefix)
        end = bisect.bisect_left(self.name_keys, prefix + "\uffff")
        return self.name_owners[start:end]

    def derivatives_with_prefix(self, prefix: str) -> list[InstrumentRecord]:
        start = bisect.bisect_left(self.derivative_symbols, prefix)
        end = bisect.bisect_left(self.derivative_symbols, prefix + "\uffff")
        return [self.records[i] for i in self.derivative_positions[start:end]]


def trigrams(text: str) -> set[str]:
    padded = f" {text} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def _word_starts(name: str) -> list[int]:
    starts = [0]
    for index, char in enumerate(name):
        if char == " " and index + 1 < len(name) and name[index + 1] != " ":
            starts.append(index + 1)
    return starts
