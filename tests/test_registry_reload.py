"""ReloadMaster is atomic: rejected rows are reported, a failed reload keeps the old master."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2 as pb
from dataserver.registry.v1 import registry_pb2_grpc

from services.registry.loader import MasterHolder
from services.registry.store import RegistryStore
from tests.registry_fixtures import TRADING_DATE, RegistryUnderTest, running_registry
from tests.test_master_parser import COMPACT_HEADER


@pytest_asyncio.fixture(loop_scope="session")
async def registry(database_url: str, masters_dir: Path) -> AsyncIterator[RegistryUnderTest]:
    async with running_registry(database_url, masters_dir) as running:
        yield running


def write_master(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([COMPACT_HEADER, *rows]) + "\n")
    return path


async def test_reload_from_file_reports_rejected_rows(registry: RegistryUnderTest, tmp_path: Path) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(registry.channel)
    before = await stub.GetMasterStatus(pb.GetMasterStatusRequest(), metadata=registry.admin)
    path = write_master(
        tmp_path / "master.csv",
        [
            "NSE,E,2885,EQUITY,0,RELIANCE,1.0,Reliance Industries,,,,10.0000,NA,ES,EQ,RELIANCE INDUSTRIES LTD",
            "NSE,E,11536,EQUITY,0,TCS,1.0,Tata Consultancy,,,,10.0000,NA,ES,EQ,TCS LTD",
            "NSE,E,,EQUITY,0,NOID,1.0,No id,,,,10.0000,NA,ES,EQ,NOID",
        ],
    )
    reply = await stub.ReloadMaster(
        pb.ReloadMasterRequest(source=pb.MASTER_SOURCE_FILE, file_path=str(path)), metadata=registry.admin
    )
    assert reply.status.version == before.status.version + 1
    assert (reply.status.row_count, reply.status.rejected_count) == (2, 1)
    assert reply.status.source == pb.MASTER_SOURCE_FILE and reply.status.source_detail == str(path)
    assert [(r.line_number, "security id" in r.reason) for r in reply.rejected_rows] == [(4, True)]
    found = await stub.SearchInstruments(pb.SearchInstrumentsRequest(query="TCS"), metadata=registry.user)
    assert found.instruments[0].key.security_id == 11536
    async with registry.pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) AS n, count(DISTINCT master_version) AS v FROM instruments")
        row = await cursor.fetchone()
    assert row is not None and (row["n"], row["v"]) == (2, 1)  # the old version's rows are gone


async def test_failed_reload_keeps_the_previous_master(registry: RegistryUnderTest, tmp_path: Path) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(registry.channel)
    before = await stub.GetMasterStatus(pb.GetMasterStatusRequest(), metadata=registry.admin)
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("this,is,not\na,scrip,master\n")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ReloadMaster(
            pb.ReloadMasterRequest(source=pb.MASTER_SOURCE_FILE, file_path=str(garbage)), metadata=registry.admin
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "previous master keeps serving" in (raised.value.details() or "")
    only_bad = write_master(tmp_path / "bad.csv", ["NSE,E,x,EQUITY,0,X,1.0,X,,,,10.0000,NA,ES,EQ,X"])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ReloadMaster(
            pb.ReloadMasterRequest(source=pb.MASTER_SOURCE_FILE, file_path=str(only_bad)), metadata=registry.admin
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ReloadMaster(
            pb.ReloadMasterRequest(source=pb.MASTER_SOURCE_FILE, file_path=str(tmp_path / "missing.csv")),
            metadata=registry.admin,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ReloadMaster(pb.ReloadMasterRequest(source=pb.MASTER_SOURCE_FILE), metadata=registry.admin)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await stub.GetMasterStatus(pb.GetMasterStatusRequest(), metadata=registry.admin)
    assert after.status == before.status
    key = common_pb2.InstrumentKey(exchange_segment=common_pb2.EXCHANGE_SEGMENT_NSE_EQ, security_id=2885)
    assert (
        await stub.GetInstrument(pb.GetInstrumentRequest(key=key), metadata=registry.user)
    ).instrument.trading_symbol == "RELIANCE"


async def test_reload_generated_for_another_date(registry: RegistryUnderTest) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(registry.channel)
    reply = await stub.ReloadMaster(
        pb.ReloadMasterRequest(source=pb.MASTER_SOURCE_GENERATED, trading_date="2026-12-01"), metadata=registry.admin
    )
    assert reply.status.trading_date == "2026-12-01" and reply.status.rejected_count == 0
    expiries = await stub.ListExpiries(pb.ListExpiriesRequest(underlying_symbol="NIFTY"), metadata=registry.user)
    assert expiries.expiries[0].expiry_date >= "2026-12-01"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ReloadMaster(pb.ReloadMasterRequest(trading_date="1/12/2026"), metadata=registry.admin)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "YYYY-MM-DD" in (raised.value.details() or "")


async def test_a_reload_without_a_date_takes_the_clock_s_trading_date(registry: RegistryUnderTest) -> None:
    stub = registry_pb2_grpc.RegistryServiceStub(registry.channel)
    reply = await stub.ReloadMaster(pb.ReloadMasterRequest(source=pb.MASTER_SOURCE_GENERATED), metadata=registry.admin)
    assert reply.status.trading_date == TRADING_DATE.isoformat()


async def test_a_restarted_registry_restores_the_master_from_postgres(registry: RegistryUnderTest) -> None:
    holder = MasterHolder(RegistryStore(registry.pool))
    assert not await holder.restore(TRADING_DATE.replace(day=TRADING_DATE.day + 1))
    assert await holder.restore(TRADING_DATE)
    assert holder.current is not None and registry.holder.current is not None
    restored, original = holder.current.catalog, registry.holder.current.catalog
    assert len(restored.records) == len(original.records)
    assert restored.by_key[("NSE_EQ", 2885)] == original.by_key[("NSE_EQ", 2885)]
    nifty = restored.groups["NIFTY"]
    assert nifty.chains.keys() == original.groups["NIFTY"].chains.keys()
