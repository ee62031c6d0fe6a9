"""Tier A watchlists over gRPC against real Postgres and a real registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from dataserver.common.v1 import common_pb2
from dataserver.subscription.v1 import subscription_pb2 as pb

from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription

RELIANCE_NOV_FUTURE = 522910976  # the generated master's RELIANCE future of 2026-11-23


@pytest_asyncio.fixture(loop_scope="session")
async def service(database_url: str, masters_dir: Path) -> AsyncIterator[SubscriptionUnderTest]:
    async with running_subscription(database_url, masters_dir, user_max_items=4) as running:
        yield running


async def expect(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value.details() or ""


async def invariants(service: SubscriptionUnderTest) -> None:
    bad_refs = await service.rows(
        "SELECT s.exchange_segment, s.security_id FROM subscriptions s LEFT JOIN subscription_owners o "
        "USING (exchange_segment, security_id) GROUP BY 1, 2, s.ref_count HAVING count(o.owner_id) <> s.ref_count"
    )
    assert bad_refs == []
    over = await service.rows(
        "SELECT shard_id, count(*) FROM subscriptions GROUP BY shard_id HAVING count(*) > %s",
        service.settings.feed_instruments_per_connection,
    )
    assert over == []
    drift = await service.rows(
        "SELECT * FROM (SELECT shard_id, tier, false AS incoming, count(*) AS n FROM subscriptions GROUP BY 1, 2 "
        "UNION ALL SELECT moving_to_shard, tier, true, count(*) FROM subscriptions WHERE moving_to_shard IS NOT NULL "
        "GROUP BY 1, 2) actual FULL JOIN (SELECT * FROM subscription_counts WHERE n <> 0) kept "
        "USING (shard_id, tier, incoming) WHERE actual.n IS DISTINCT FROM kept.n"
    )
    assert drift == []  # the trigger-kept counts match the rows


async def test_add_stock_subscribes_underlying_and_chain(service: SubscriptionUnderTest) -> None:
    alice = await service.user("alice")
    reply = await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="RELIANCE"), metadata=alice)
    item = reply.watchlist_item
    assert reply.created and item.user_id == "alice" and item.symbol == "RELIANCE"
    assert item.state == pb.WATCHLIST_ITEM_STATE_ACTIVE and item.strikes_each_side == 12
    assert item.underlying.security_id == 2885 and item.instrument_count == len(item.instruments)
    assert item.instrument_count == 52  # the stock, 25 strikes x CE/PE and the expiry's future
    futures = [i for i in item.instruments if i.security_id == RELIANCE_NOV_FUTURE]
    assert len(futures) == 1 and futures[0].exchange_segment == common_pb2.EXCHANGE_SEGMENT_NSE_FNO
    rows = await service.rows("SELECT count(*) AS n FROM subscriptions")
    assert rows[0]["n"] == 52
    again = await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="reliance"), metadata=alice)
    assert not again.created and again.watchlist_item.item_id == item.item_id
    assert (await service.rows("SELECT count(*) AS n FROM subscriptions"))[0]["n"] == 52
    await invariants(service)


async def test_shared_instruments_are_subscribed_once_and_released_per_owner(service: SubscriptionUnderTest) -> None:
    alice, bob = await service.user("alice"), await service.user("bob")
    a = await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="RELIANCE"), metadata=alice)
    b = await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="RELIANCE"), metadata=bob)
    assert a.watchlist_item.item_id != b.watchlist_item.item_id
    refs = await service.rows("SELECT ref_count, count(*) AS n FROM subscriptions GROUP BY ref_count")
    assert [(r["ref_count"], r["n"]) for r in refs] == [(2, 52)]
    removed = await service.stub.RemoveWatchlistItem(
        pb.RemoveWatchlistItemRequest(item_id=a.watchlist_item.item_id), metadata=alice
    )
    assert removed.instruments_released == 0
    refs = await service.rows("SELECT ref_count, count(*) AS n FROM subscriptions GROUP BY ref_count")
    assert [(r["ref_count"], r["n"]) for r in refs] == [(1, 52)]
    removed = await service.stub.RemoveWatchlistItem(
        pb.RemoveWatchlistItemRequest(item_id=b.watchlist_item.item_id), metadata=bob
    )
    assert removed.instruments_released == 52
    assert (await service.rows("SELECT count(*) AS n FROM subscriptions"))[0]["n"] == 0
    await invariants(service)


async def test_watchlist_listing_and_identity(service: SubscriptionUnderTest) -> None:
    alice, bob = await service.user("alice"), await service.user("bob")
    await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="NIFTY", strikes_each_side=5), metadata=alice)
    await service.stub.AddWatchlistItem(
        pb.AddWatchlistItemRequest(symbol="RELIANCE", underlying_only=True), metadata=alice
    )
    listed = await service.stub.ListWatchlistItems(
        pb.ListWatchlistItemsRequest(include_instruments=True, page_size=1), metadata=alice
    )
    assert listed.total_size == 2 and len(listed.watchlist_items) == 1 and listed.next_page_token
    # NIFTY +/-5 strikes x CE/PE, the index and the future of the (monthly) expiry.
    assert listed.watchlist_items[0].instrument_count == 24 == len(listed.watchlist_items[0].instruments)
    rest = await service.stub.ListWatchlistItems(
        pb.ListWatchlistItemsRequest(include_instruments=True, page_size=1, page_token=listed.next_page_token),
        metadata=alice,
    )
    assert rest.watchlist_items[0].instrument_count == 1 and not rest.next_page_token
    assert (await service.stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=bob)).total_size == 0
    await expect(
        service.stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(user_id="alice"), metadata=bob),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    for_alice = await service.stub.ListWatchlistItems(
        pb.ListWatchlistItemsRequest(user_id="alice"), metadata=service.admin
    )
    assert for_alice.total_size == 2
    by_admin = await service.stub.AddWatchlistItem(
        pb.AddWatchlistItemRequest(symbol="BANKNIFTY", strikes_each_side=2, user_id="bob"), metadata=service.admin
    )
    assert by_admin.watchlist_item.user_id == "bob"


async def test_bad_input(service: SubscriptionUnderTest) -> None:
    alice, bob = await service.user("alice"), await service.user("bob")
    details = await expect(
        service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="NOSUCHSTOCK"), metadata=alice),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "NOSUCHSTOCK" in details
    details = await expect(
        service.stub.AddWatchlistItem(
            pb.AddWatchlistItemRequest(symbol="NIFTY", expiry_date="2026-11-25"), metadata=alice
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "listed expiries: 2026-11-23" in details
    details = await expect(
        service.stub.AddWatchlistItem(
            pb.AddWatchlistItemRequest(symbol="NIFTY", strikes_each_side=101), metadata=alice
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "1..100" in details
    await expect(
        service.stub.AddWatchlistItem(
            pb.AddWatchlistItemRequest(symbol="NIFTY", expiry_date="23/11/2026"), metadata=alice
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect(
        service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol=""), metadata=alice),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect(
        service.stub.RemoveWatchlistItem(pb.RemoveWatchlistItemRequest(item_id="999999"), metadata=alice),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect(
        service.stub.RemoveWatchlistItem(pb.RemoveWatchlistItemRequest(item_id="abc"), metadata=alice),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    mine = await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="RELIANCE"), metadata=alice)
    await expect(
        service.stub.RemoveWatchlistItem(
            pb.RemoveWatchlistItemRequest(item_id=mine.watchlist_item.item_id), metadata=bob
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect(
        service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="RELIANCE", user_id="alice"), metadata=bob),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect(
        service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="RELIANCE")), grpc.StatusCode.UNAUTHENTICATED
    )
    await expect(
        service.stub.AddWatchlistItem(
            pb.AddWatchlistItemRequest(symbol="RELIANCE"), metadata=(("authorization", "Bearer nope"),)
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await expect(service.stub.EndOfDay(pb.EndOfDayRequest(), metadata=alice), grpc.StatusCode.PERMISSION_DENIED)


async def test_per_user_item_quota(service: SubscriptionUnderTest) -> None:
    carol = await service.user("carol")
    for symbol in ("RELIANCE", "NIFTY", "BANKNIFTY", "CRUDEOIL"):
        await service.stub.AddWatchlistItem(
            pb.AddWatchlistItemRequest(symbol=symbol, strikes_each_side=2), metadata=carol
        )
    details = await expect(
        service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="SBIN", underlying_only=True), metadata=carol),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert "4 of 4 items" in details
