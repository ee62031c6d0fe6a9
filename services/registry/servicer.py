"""The RegistryService RPCs over the serving master."""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import date
from pathlib import Path

import grpc
from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.auth import require_privileged
from services.common.clock import Clock, trading_date_of
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.instruments import (
    PROTO_TO_INSTRUMENT_TYPE,
    PROTO_TO_SEGMENT,
    SEGMENT_NAMES_ACCEPTED,
)
from services.common.keys import key_from_proto
from services.common.last_prices import LastPriceSource
from services.common.pagination import (
    decode_page_token,
    fingerprint,
    next_token,
    page_size,
)
from services.dhan.master import InstrumentRecord, MasterFormatError
from services.registry import sources
from services.registry.catalog import UnderlyingGroup
from services.registry.chain import ChainWindow, chain_window
from services.registry.convert import EXPIRY_FLAGS, instrument_proto, master_status_proto
from services.registry.loader import LoadedMaster, MasterHolder
from services.registry.search import SearchFilter, search
from services.registry.store import RegistryStore

log = logging.getLogger(__name__)

SEARCH_PAGE_DEFAULT, SEARCH_PAGE_MAX = 20, 500
EXPIRY_PAGE_DEFAULT, EXPIRY_PAGE_MAX = 50, 500
CHAIN_WIDTH_DEFAULT, CHAIN_WIDTH_MAX = 10, 200
_CHAIN_CACHE_SIZE = 4096
_REJECTED_SHOWN = 100


def parse_date(text: str, field: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"{field} {text!r} is malformed: expected YYYY-MM-DD, e.g. 2026-11-24") from None


def _chain_response(
    underlying: InstrumentRecord, future: InstrumentRecord | None, expiry: date, window: ChainWindow
) -> registry_pb2.GetOptionChainResponse:
    """A chain window as a response, without the price it was centred on (per call)."""
    return registry_pb2.GetOptionChainResponse(
        underlying=instrument_proto(underlying),
        expiry_date=expiry.isoformat(),
        atm_strike=window.atm_strike,
        strike_step=window.strike_step,
        strikes=[
            registry_pb2.ChainStrike(
                strike_price=strike,
                call=instrument_proto(call) if call else None,
                put=instrument_proto(put) if put else None,
            )
            for strike, call, put in window.strikes
        ],
        strike_count=len(window.strikes),
        listed_strike_count=window.listed_strike_count,
        clipped_below=window.clipped_below,
        clipped_above=window.clipped_above,
        future=instrument_proto(future) if future is not None else None,
    )


class MasterConfig:
    """How ReloadMaster with an unspecified source reloads, and where files are kept."""

    def __init__(self, default_source: str, cache_dir: Path, seed: int, scale: str, master_file: Path | None) -> None:
        self.default_source = default_source
        self.cache_dir = cache_dir
        self.seed = seed
        self.scale = scale
        self.master_file = master_file

    def resolve(self, source: str, file_path: str, trading_date: date) -> sources.MasterFile:
        if source == "file":
            path = Path(file_path) if file_path else self.master_file
            if path is None:
                raise InvalidArgument("MASTER_SOURCE_FILE needs file_path, the server-side path of a Dhan CSV")
            return sources.from_file(path)
        if source == "dhan":
            return sources.from_dhan(self.cache_dir, trading_date)
        return sources.from_generator(self.cache_dir, trading_date, self.seed, self.scale)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(
        self, holder: MasterHolder, store: RegistryStore, config: MasterConfig, prices: LastPriceSource, clock: Clock
    ) -> None:
        self._clock = clock  # dates a reload that names no trading date
        self._holder = holder
        self._store = store
        self._config = config
        self._prices = prices
        self._chains: OrderedDict[tuple[object, ...], registry_pb2.GetOptionChainResponse] = OrderedDict()

    def _master(self) -> LoadedMaster:
        master = self._holder.current
        if master is None:
            raise FailedPrecondition("no instrument master is loaded yet; retry shortly or call ReloadMaster")
        return master

    def _group(self, master: LoadedMaster, symbol: str) -> UnderlyingGroup:
        if not symbol.strip():
            raise InvalidArgument("underlying_symbol is required, e.g. NIFTY, RELIANCE or CRUDEOIL")
        group = master.catalog.groups.get(symbol.strip().upper())
        if group is None:
            raise NotFound(f"unknown underlying symbol {symbol!r}; SearchInstruments finds symbols")
        return group

    async def SearchInstruments(
        self, request: registry_pb2.SearchInstrumentsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.SearchInstrumentsResponse:
        if not request.query.strip():
            raise InvalidArgument("query is empty: give a symbol, a symbol prefix or part of a name")
        size = page_size(request.page_size, default=SEARCH_PAGE_DEFAULT, maximum=SEARCH_PAGE_MAX)
        try:
            segments = frozenset(PROTO_TO_SEGMENT[s] for s in request.exchange_segments)
            types = frozenset(PROTO_TO_INSTRUMENT_TYPE[t] for t in request.instrument_types)
        except KeyError:
            raise InvalidArgument(
                f"unknown exchange segment or instrument type in filters; segments accepted: {SEGMENT_NAMES_ACCEPTED}"
            ) from None
        master = self._master()
        key = fingerprint(master.version.version, request.query.strip().upper(), sorted(segments), sorted(types))
        offset = decode_page_token(request.page_token, key)
        page = search(master.catalog, request.query, SearchFilter(segments, types), offset, size)
        return registry_pb2.SearchInstrumentsResponse(
            instruments=[instrument_proto(r) for r in page.records],
            next_page_token=next_token(offset, len(page.records), page.total, key),
            total_size=page.total,
        )

    async def GetInstrument(
        self, request: registry_pb2.GetInstrumentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetInstrumentResponse:
        segment, security_id = key_from_proto(request.key)
        record = self._master().catalog.by_key.get((segment, security_id))
        if record is None:
            raise NotFound(f"no instrument {segment} {security_id} in the master")
        return registry_pb2.GetInstrumentResponse(instrument=instrument_proto(record))

    async def ResolveTradingSymbol(
        self, request: registry_pb2.ResolveTradingSymbolRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ResolveTradingSymbolResponse:
        symbol = request.trading_symbol.strip().upper()
        if not symbol:
            raise InvalidArgument("trading_symbol is required, e.g. RELIANCE or NIFTY-Nov2026-25800-CE")
        segment = PROTO_TO_SEGMENT.get(request.exchange_segment)
        matches = [
            r for r in self._master().catalog.by_symbol.get(symbol, ()) if segment is None or r.segment == segment
        ]
        if not matches:
            where = f" in {segment}" if segment else ""
            raise NotFound(f"no instrument with trading symbol {request.trading_symbol!r}{where}")
        return registry_pb2.ResolveTradingSymbolResponse(instruments=[instrument_proto(r) for r in matches])

    async def ListExpiries(
        self, request: registry_pb2.ListExpiriesRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListExpiriesResponse:
        size = page_size(request.page_size, default=EXPIRY_PAGE_DEFAULT, maximum=EXPIRY_PAGE_MAX)
        master = self._master()
        group = self._group(master, request.underlying_symbol)
        expiries = [
            info
            for when, info in sorted(group.expiries.items())
            if when >= master.catalog.trading_date
            and (request.kind != registry_pb2.DERIVATIVE_KIND_OPTIONS or info.has_options)
            and (request.kind != registry_pb2.DERIVATIVE_KIND_FUTURES or info.has_futures)
        ]
        key = fingerprint(master.version.version, group.symbol, request.kind)
        offset = decode_page_token(request.page_token, key)
        page = expiries[offset : offset + size]
        return registry_pb2.ListExpiriesResponse(
            expiries=[
                registry_pb2.Expiry(
                    expiry_date=info.expiry.isoformat(),
                    expiry_flag=EXPIRY_FLAGS.get(info.flag, common_pb2.EXPIRY_FLAG_UNSPECIFIED),
                    has_options=info.has_options,
                    has_futures=info.has_futures,
                    strike_count=info.strike_count,
                )
                for info in page
            ],
            next_page_token=next_token(offset, len(page), len(expiries), key),
        )

    async def GetOptionChain(
        self, request: registry_pb2.GetOptionChainRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetOptionChainResponse:
        each_side = request.strikes_each_side or CHAIN_WIDTH_DEFAULT
        if not 1 <= each_side <= CHAIN_WIDTH_MAX:
            raise InvalidArgument(
                f"strikes_each_side {request.strikes_each_side} is out of range: "
                f"accepted 1..{CHAIN_WIDTH_MAX} (0 means {CHAIN_WIDTH_DEFAULT})"
            )
        master = self._master()
        group = self._group(master, request.underlying_symbol)
        listed = sorted(e for e in group.chains if e >= master.catalog.trading_date)
        if not listed:
            raise NotFound(f"{group.symbol} lists no options expiring on or after {master.catalog.trading_date}")
        if request.expiry_date:
            expiry = parse_date(request.expiry_date, "expiry_date")
            if expiry not in listed:
                shown = ", ".join(e.isoformat() for e in listed[:12])
                raise NotFound(f"{group.symbol} lists no options expiring {expiry}; listed expiries: {shown}")
        else:
            expiry = listed[0]
        listing = group.chains[expiry]
        underlying = group.future_for(expiry) if group.is_commodity else group.feed_instrument
        if underlying is None:  # an option group with no priceable underlying in the master
            raise FailedPrecondition(f"{group.symbol} has no underlying instrument in the master to price the chain")
        price, source = await self._underlying_price(
            request, underlying.segment, underlying.security_id, underlying.previous_close
        )

        window = chain_window(listing, price, each_side)
        key = (master.version.version, group.symbol, expiry, window.atm_strike, each_side)
        cached = self._chains.get(key)
        if cached is None:
            cached = _chain_response(underlying, group.listed_future(expiry), expiry, window)
            # Recomputed only when the ATM strike changes: persist once per (underlying, expiry, ATM).
            await self._store.save_chain_window(master.version.version, group.symbol, expiry, each_side, price, window)
            self._chains[key] = cached
            if len(self._chains) > _CHAIN_CACHE_SIZE:
                self._chains.popitem(last=False)
        else:
            self._chains.move_to_end(key)
        response = registry_pb2.GetOptionChainResponse()
        response.CopyFrom(cached)
        response.underlying_price = price
        response.price_source = source
        return response

    async def _underlying_price(
        self, request: registry_pb2.GetOptionChainRequest, segment: str, security_id: int, previous_close: float | None
    ) -> tuple[float, registry_pb2.PriceSource]:
        if request.WhichOneof("price") == "underlying_price":
            if not request.underlying_price > 0:
                raise FailedPrecondition(
                    f"underlying_price {request.underlying_price} is not a usable price: "
                    "give a positive price or set use_last_price"
                )
            return request.underlying_price, registry_pb2.PRICE_SOURCE_REQUEST
        last = await self._prices.last_price(segment, security_id)
        if last is not None and last > 0:
            return last, registry_pb2.PRICE_SOURCE_LAST_PRICE
        if previous_close is not None and previous_close > 0:
            return previous_close, registry_pb2.PRICE_SOURCE_PREVIOUS_CLOSE
        raise FailedPrecondition(
            f"no price is known for {segment} {security_id} (no live tick, no previous close); pass underlying_price"
        )

    async def ReloadMaster(
        self, request: registry_pb2.ReloadMasterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ReloadMasterResponse:
        require_privileged("ReloadMaster")
        names = {v: k for k, v in {"dhan": 1, "file": 2, "generated": 3}.items()}
        source = names.get(request.source, self._config.default_source)
        trading_date = (
            parse_date(request.trading_date, "trading_date") if request.trading_date else trading_date_of(self._clock)
        )
        master_file = self._config.resolve(source, request.file_path, trading_date)
        try:
            outcome = await self._holder.load(master_file, trading_date)
        except (MasterFormatError, ValueError, OSError) as error:
            raise FailedPrecondition(f"reload failed, the previous master keeps serving: {error}") from error
        self._chains.clear()
        return registry_pb2.ReloadMasterResponse(
            status=master_status_proto(outcome.master.version),
            rejected_rows=[
                registry_pb2.RejectedRow(line_number=row.line_number, reason=row.reason)
                for row in outcome.rejected[:_REJECTED_SHOWN]
            ],
        )

    async def GetMasterStatus(
        self, request: registry_pb2.GetMasterStatusRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetMasterStatusResponse:
        return registry_pb2.GetMasterStatusResponse(status=master_status_proto(self._master().version))
