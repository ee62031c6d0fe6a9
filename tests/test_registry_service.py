"""The registry over gRPC: every RPC and every bad input, against real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2 as pb
from dataserver.registry.v1 import registry_pb2_grpc
from grpc_health.v1 import health_pb2

from services.common.clients import health_stub
from services.dhan.master import parse_master
from services.registry.catalog import Catalog
from tests.conftest import clone_database
from tests.registry_fixtures import (
    NIFTY_WEEKLY,
    TRADING_DATE,
    RegistryUnderTest,
    expect_status,
    running_registry,
)

NSE_EQ = common_pb2.EXCHANGE_SEGMENT_NSE_EQ


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def registry(pg_conninfo: str, template_conninfo: str, masters_dir: Path) -> AsyncIterator[RegistryUnderTest]:
    _, conninfo = clone_database(pg_conninfo)
    async with running_registry(conninfo, masters_dir) as running:
        yield running


@pytest.fixture
def stub(registry: RegistryUnderTest) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(registry.channel)


async def test_search_reliance_returns_the_real_nse_id_first(stub, registry) -> None:
    reply = await stub.SearchInstruments(pb.SearchInstrumentsRequest(query="RELIANCE"), metadata=registry.user)
    first = reply.instruments[0]
    assert (first.key.exchange_segment, first.key.security_id) == (NSE_EQ, 2885)
    assert first.trading_symbol == "RELIANCE"
    assert reply.total_size > 20 and reply.next_page_token


async def test_search_orders_exact_then_cash_index_futures_options(stub, registry) -> None:
    reply = await stub.SearchInstruments(
        pb.SearchInstrumentsRequest(query="RELIANCE", page_size=500), metadata=registry.user
    )
    kinds = [i.instrument_type for i in reply.instruments]
    exact = [i for i in reply.instruments if i.trading_symbol == "RELIANCE"]
    assert [i.trading_symbol for i in reply.instruments[: len(exact)]] == ["RELIANCE"] * len(exact)
    rank = {
        common_pb2.INSTRUMENT_TYPE_EQUITY: 0,
        common_pb2.INSTRUMENT_TYPE_INDEX: 1,
        common_pb2.INSTRUMENT_TYPE_FUTSTK: 2,
        common_pb2.INSTRUMENT_TYPE_OPTSTK: 3,
    }
    ranks = [rank[k] for k in kinds[len(exact) :]]
    assert ranks == sorted(ranks)
    assert common_pb2.INSTRUMENT_TYPE_FUTSTK in kinds and common_pb2.INSTRUMENT_TYPE_OPTSTK in kinds


async def test_search_pages_cover_every_match_once(stub, registry) -> None:
    seen: list[tuple[int, int]] = []
    token, total = "", None
    while True:
        reply = await stub.SearchInstruments(
            pb.SearchInstrumentsRequest(query="NIFTY", page_size=97, page_token=token), metadata=registry.user
        )
        total = reply.total_size
        seen += [(i.key.exchange_segment, i.key.security_id) for i in reply.instruments]
        token = reply.next_page_token
        if not token:
            break
    assert len(seen) == total == len(set(seen))
    assert seen[0] == (common_pb2.EXCHANGE_SEGMENT_IDX_I, 13)


async def test_search_by_name_prefix_and_fuzzy(stub, registry) -> None:
    by_name = await stub.SearchInstruments(pb.SearchInstrumentsRequest(query="reliance indus"), metadata=registry.user)
    assert by_name.instruments[0].underlying_symbol == "RELIANCE"
    fuzzy = await stub.SearchInstruments(pb.SearchInstrumentsRequest(query="RELAINCE"), metadata=registry.user)
    assert fuzzy.instruments and fuzzy.instruments[0].underlying_symbol == "RELIANCE"


async def test_search_filters_and_derivative_tokens(stub, registry) -> None:
    futures = await stub.SearchInstruments(pb.SearchInstrumentsRequest(query="RELIANCE FUT"), metadata=registry.user)
    assert futures.instruments and all(
        i.instrument_type == common_pb2.INSTRUMENT_TYPE_FUTSTK for i in futures.instruments
    )
    chain = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="NIFTY", underlying_price=25_912), metadata=registry.user
    )
    atm = int(chain.atm_strike)
    calls = await stub.SearchInstruments(pb.SearchInstrumentsRequest(query=f"NIFTY {atm} CE"), metadata=registry.user)
    assert calls.instruments
    assert all(i.strike_price == atm and i.option_type == common_pb2.OPTION_TYPE_CALL for i in calls.instruments)
    only_bse = await stub.SearchInstruments(
        pb.SearchInstrumentsRequest(query="RELIANCE", exchange_segments=[common_pb2.EXCHANGE_SEGMENT_BSE_EQ]),
        metadata=registry.user,
    )
    assert [i.key.security_id for i in only_bse.instruments] == [500325]
    assert only_bse.total_size == 1


async def test_search_bad_input(stub, registry) -> None:
    details = await expect_status(
        stub.SearchInstruments(pb.SearchInstrumentsRequest(query="  "), metadata=registry.user),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "query" in details
    details = await expect_status(
        stub.SearchInstruments(pb.SearchInstrumentsRequest(query="NIFTY", page_size=-1), metadata=registry.user),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_size" in details
    await expect_status(
        stub.SearchInstruments(
            pb.SearchInstrumentsRequest(query="NIFTY", page_token="garbage!"), metadata=registry.user
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    first = await stub.SearchInstruments(pb.SearchInstrumentsRequest(query="NIFTY"), metadata=registry.user)
    await expect_status(
        stub.SearchInstruments(
            pb.SearchInstrumentsRequest(query="BANKNIFTY", page_token=first.next_page_token), metadata=registry.user
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    oversized = await stub.SearchInstruments(
        pb.SearchInstrumentsRequest(query="NIFTY", page_size=100_000), metadata=registry.user
    )
    assert len(oversized.instruments) == min(500, oversized.total_size)
    coerced = await stub.SearchInstruments(
        pb.SearchInstrumentsRequest(query="A", page_size=100_000, exchange_segments=[]), metadata=registry.user
    )
    assert len(coerced.instruments) == min(500, coerced.total_size)


async def test_get_instrument(stub, registry) -> None:
    key = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=2885)
    reply = await stub.GetInstrument(pb.GetInstrumentRequest(key=key), metadata=registry.user)
    assert reply.instrument.trading_symbol == "RELIANCE" and reply.instrument.tick_size == pytest.approx(0.10)
    missing = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=999_999_999)
    assert "999999999" in await expect_status(
        stub.GetInstrument(pb.GetInstrumentRequest(key=missing), metadata=registry.user), grpc.StatusCode.NOT_FOUND
    )
    no_segment = common_pb2.InstrumentKey(security_id=2885)
    await expect_status(
        stub.GetInstrument(pb.GetInstrumentRequest(key=no_segment), metadata=registry.user),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_resolve_trading_symbol(stub, registry) -> None:
    reply = await stub.ResolveTradingSymbol(
        pb.ResolveTradingSymbolRequest(trading_symbol="reliance"), metadata=registry.user
    )
    assert [(i.key.exchange_segment, i.key.security_id) for i in reply.instruments] == [
        (NSE_EQ, 2885),
        (common_pb2.EXCHANGE_SEGMENT_BSE_EQ, 500325),
    ]
    await expect_status(
        stub.ResolveTradingSymbol(
            pb.ResolveTradingSymbolRequest(trading_symbol="NOSUCHSYMBOL"), metadata=registry.user
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        stub.ResolveTradingSymbol(pb.ResolveTradingSymbolRequest(), metadata=registry.user),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_list_expiries(stub, registry) -> None:
    reply = await stub.ListExpiries(
        pb.ListExpiriesRequest(underlying_symbol="NIFTY", kind=pb.DERIVATIVE_KIND_OPTIONS), metadata=registry.user
    )
    dates = [e.expiry_date for e in reply.expiries]
    assert dates == sorted(dates) and dates[0] >= TRADING_DATE.isoformat()
    assert dates[0] == NIFTY_WEEKLY
    assert all(e.has_options and e.strike_count > 0 for e in reply.expiries)
    paged = await stub.ListExpiries(
        pb.ListExpiriesRequest(underlying_symbol="NIFTY", page_size=1), metadata=registry.user
    )
    assert len(paged.expiries) == 1 and paged.next_page_token
    await expect_status(
        stub.ListExpiries(pb.ListExpiriesRequest(underlying_symbol="NOPE"), metadata=registry.user),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        stub.ListExpiries(pb.ListExpiriesRequest(underlying_symbol="NIFTY", page_size=-5), metadata=registry.user),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_option_chain_window_around_atm(stub, registry) -> None:
    reply = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="NIFTY", underlying_price=25_912.4, strikes_each_side=5),
        metadata=registry.user,
    )
    assert reply.expiry_date == NIFTY_WEEKLY
    assert (reply.underlying.key.exchange_segment, reply.underlying.key.security_id) == (
        common_pb2.EXCHANGE_SEGMENT_IDX_I,
        13,
    )
    assert reply.atm_strike == 25_900 and reply.strike_step == 50
    assert reply.strike_count == 11 == len(reply.strikes)
    strikes = [s.strike_price for s in reply.strikes]
    # The window counts listed strikes: 50 apart near the money, wider further out.
    assert strikes[5] == 25_900 and strikes == sorted(strikes)
    assert strikes[4:7] == [25_850, 25_900, 25_950]
    for strike in reply.strikes:
        assert (
            strike.call.option_type == common_pb2.OPTION_TYPE_CALL and strike.call.strike_price == strike.strike_price
        )
        assert strike.put.option_type == common_pb2.OPTION_TYPE_PUT and strike.put.expiry_date == reply.expiry_date
    assert reply.price_source == pb.PRICE_SOURCE_REQUEST and reply.clipped_below == reply.clipped_above == 0


async def test_option_chain_step_is_derived_from_listed_strikes(stub, registry) -> None:
    near = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="NIFTY", underlying_price=25_900), metadata=registry.user
    )
    far = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="NIFTY", underlying_price=25_900 * 1.12), metadata=registry.user
    )
    assert near.strike_step == 50
    assert far.strike_step > near.strike_step


async def test_option_chain_clips_at_listed_edges(stub, registry) -> None:
    reply = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="NIFTY", underlying_price=1.0, strikes_each_side=10),
        metadata=registry.user,
    )
    assert reply.atm_strike == reply.strikes[0].strike_price
    assert reply.clipped_below == 10 and reply.strike_count == 11 and reply.clipped_above == 0


async def test_option_chain_prices_from_previous_close_without_a_live_price(stub, registry) -> None:
    reply = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="RELIANCE", use_last_price=True), metadata=registry.user
    )
    assert reply.price_source == pb.PRICE_SOURCE_PREVIOUS_CLOSE and reply.underlying_price > 0
    assert reply.underlying.key.security_id == 2885 and reply.strike_count == 21


async def test_option_chain_for_a_commodity_uses_its_future(stub, registry) -> None:
    reply = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="CRUDEOIL", use_last_price=True), metadata=registry.user
    )
    assert reply.underlying.instrument_type == common_pb2.INSTRUMENT_TYPE_FUTCOM
    assert reply.underlying.expiry_date >= reply.expiry_date and reply.strike_count > 0


async def test_option_chain_names_the_future_listed_for_its_expiry(stub, registry) -> None:
    async def chain(symbol: str, expiry: str = "") -> pb.GetOptionChainResponse:
        request = pb.GetOptionChainRequest(underlying_symbol=symbol, expiry_date=expiry, use_last_price=True)
        return await stub.GetOptionChain(request, metadata=registry.user)

    # NIFTY's nearest expiry is also its monthly one (the Tuesday holiday moves both to Monday):
    # the index future expiring that day is listed.
    monthly = await chain("NIFTY", NIFTY_WEEKLY)
    assert monthly.HasField("future")
    assert monthly.future.instrument_type == common_pb2.INSTRUMENT_TYPE_FUTIDX
    assert monthly.future.expiry_date == monthly.expiry_date and monthly.future.underlying_symbol == "NIFTY"
    # A weekly expiry has no future.
    expiries = await stub.ListExpiries(
        pb.ListExpiriesRequest(underlying_symbol="NIFTY", kind=pb.DERIVATIVE_KIND_OPTIONS), metadata=registry.user
    )
    weekly = [e.expiry_date for e in expiries.expiries if e.expiry_flag == common_pb2.EXPIRY_FLAG_WEEKLY]
    assert weekly and not (await chain("NIFTY", weekly[0])).HasField("future")
    # A stock's monthly options: the stock future of the same day.
    stock = await chain("RELIANCE")
    assert stock.future.instrument_type == common_pb2.INSTRUMENT_TYPE_FUTSTK
    assert stock.future.expiry_date == stock.expiry_date
    # A commodity's options exercise into the first future expiring on or after them, which is
    # also the chain's underlying.
    crude = await chain("CRUDEOIL")
    assert crude.future.instrument_type == common_pb2.INSTRUMENT_TYPE_FUTCOM
    assert crude.future.expiry_date > crude.expiry_date
    assert crude.future.key == crude.underlying.key
    # The cached window keeps it.
    assert (await chain("NIFTY", NIFTY_WEEKLY)).future == monthly.future


def test_the_listed_future_of_a_real_stock_is_the_one_of_the_same_day() -> None:
    # Real rows: RELIANCE's cash line and its monthly futures of July-September 2025.
    seed = Path(__file__).resolve().parents[1] / "services" / "dhan" / "seed"
    records = []
    for name in (
        "dhan-scrip-master-equities-indices-2026-07.csv",
        "dhan-scrip-master-detailed-stock-futures-2025-07.csv",
    ):
        with (seed / name).open(newline="") as handle:
            records += parse_master(handle).records
    group = Catalog(records, date(2025, 7, 1)).groups["RELIANCE"]
    monthly = group.listed_future(date(2025, 8, 28))
    assert monthly is not None and monthly.trading_symbol == "RELIANCE-Aug2025-FUT"
    assert group.listed_future(date(2025, 8, 21)) is None  # no future expires that day
    # What an option of that day settles on is still the next future (the chain's underlying
    # rule for commodities), which is not its forward for a stock.
    assert group.future_for(date(2025, 8, 21)) == monthly


async def test_option_chain_bad_input(stub, registry) -> None:
    zero = pb.GetOptionChainRequest(underlying_symbol="NIFTY", underlying_price=0.0)
    assert "price" in await expect_status(
        stub.GetOptionChain(zero, metadata=registry.user), grpc.StatusCode.FAILED_PRECONDITION
    )
    malformed = pb.GetOptionChainRequest(underlying_symbol="NIFTY", expiry_date="24-11-2026", underlying_price=25_900)
    assert "YYYY-MM-DD" in await expect_status(
        stub.GetOptionChain(malformed, metadata=registry.user), grpc.StatusCode.INVALID_ARGUMENT
    )
    unlisted = pb.GetOptionChainRequest(underlying_symbol="NIFTY", expiry_date="2026-11-25", underlying_price=25_900)
    assert NIFTY_WEEKLY in await expect_status(
        stub.GetOptionChain(unlisted, metadata=registry.user), grpc.StatusCode.NOT_FOUND
    )
    wide = pb.GetOptionChainRequest(underlying_symbol="NIFTY", underlying_price=25_900, strikes_each_side=201)
    assert "1..200" in await expect_status(
        stub.GetOptionChain(wide, metadata=registry.user), grpc.StatusCode.INVALID_ARGUMENT
    )
    unknown = pb.GetOptionChainRequest(underlying_symbol="NOSUCH", underlying_price=100)
    await expect_status(stub.GetOptionChain(unknown, metadata=registry.user), grpc.StatusCode.NOT_FOUND)


async def test_option_chain_is_cached_per_atm_in_postgres(stub, registry) -> None:
    async def cached_rows() -> int:
        async with registry.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) AS n FROM atm_cache WHERE underlying_symbol = 'BANKNIFTY' AND strikes_each_side = 7"
            )
            row = await cursor.fetchone()
            return int(row["n"])

    before = await cached_rows()
    first = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="BANKNIFTY", underlying_price=58_010, strikes_each_side=7),
        metadata=registry.user,
    )
    same_atm = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="BANKNIFTY", underlying_price=58_020, strikes_each_side=7),
        metadata=registry.user,
    )
    assert first.atm_strike == same_atm.atm_strike and await cached_rows() == before + 1
    assert same_atm.underlying_price == 58_020
    moved = await stub.GetOptionChain(
        pb.GetOptionChainRequest(underlying_symbol="BANKNIFTY", underlying_price=59_000, strikes_each_side=7),
        metadata=registry.user,
    )
    assert moved.atm_strike != first.atm_strike and await cached_rows() == before + 2


async def test_master_status(stub, registry) -> None:
    reply = await stub.GetMasterStatus(pb.GetMasterStatusRequest(), metadata=registry.user)
    assert reply.status.source == pb.MASTER_SOURCE_GENERATED
    assert reply.status.trading_date == TRADING_DATE.isoformat()
    assert reply.status.row_count == len(registry.holder.current.catalog.records) > 1000


async def test_credentials_are_required_and_checked(stub, registry) -> None:
    await expect_status(stub.GetMasterStatus(pb.GetMasterStatusRequest()), grpc.StatusCode.UNAUTHENTICATED)
    bad = (("authorization", "Bearer dsk_not_a_key"),)
    await expect_status(
        stub.GetMasterStatus(pb.GetMasterStatusRequest(), metadata=bad), grpc.StatusCode.UNAUTHENTICATED
    )
    details = await expect_status(
        stub.ReloadMaster(pb.ReloadMasterRequest(), metadata=registry.user), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "admin" in details


async def test_health_and_reflection_answer_without_credentials(registry) -> None:
    health = health_stub(registry.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="dataserver.registry.v1.RegistryService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflection = reflection_pb2_grpc.ServerReflectionStub(registry.channel)
    services = []
    async for answer in reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    ):
        services = [s.name for s in answer.list_services_response.service]
    assert "dataserver.registry.v1.RegistryService" in services and "grpc.health.v1.Health" in services
