"""Issue 15 §2: roles, every RPC refused without the right credentials, users kept to their
own data, key expiry and revocation, TLS, per-user rate limits."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import ipaddress
import os
import pkgutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import dataserver
import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as pb
from google.protobuf.descriptor import MethodDescriptor

from services.common.access import PRIVILEGED_RPCS, RATE_LIMITED_RPCS, USER_RPCS
from services.common.auth import create_api_key
from services.common.clients import open_channel
from services.common.clock import ManualClock
from services.common.config import ConfigError, Settings, load_settings
from services.common.db import open_pool
from services.common.last_prices import NoLastPrices
from services.common.market_calendar import IST
from services.common.ratelimit import RateLimited, RateLimiter, retry_delay
from services.common.tls import configure_client_tls
from services.registry.server import create_server as create_registry
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.registry_fixtures import TRADING_DATE, bearer, expect_status
from tests.scheduler_fixtures import FRIDAY, at, running_scheduler
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription

Metadata = tuple[tuple[str, str], ...]
WRONG: Metadata = bearer("dsk_not-a-key")


def every_method() -> list[MethodDescriptor]:
    """Every RPC of every service in our generated descriptors, so a new RPC is covered."""
    methods = []
    for module in pkgutil.walk_packages(dataserver.__path__, "dataserver."):
        if module.name.endswith("_pb2"):
            for service in importlib.import_module(module.name).DESCRIPTOR.services_by_name.values():
                methods.extend(service.methods)
    return methods


def full_name(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def test_every_rpc_is_classified() -> None:
    """The access table (services/common/access.py) names every RPC, and only real ones."""
    names = {full_name(m) for m in every_method()}
    assert len(names) >= 39  # the five services as of issue 15
    assert names == USER_RPCS | PRIVILEGED_RPCS
    assert not USER_RPCS & PRIVILEGED_RPCS
    assert RATE_LIMITED_RPCS <= USER_RPCS


def _raw(data: bytes) -> bytes:
    return data


async def call(channel: grpc.aio.Channel, method: MethodDescriptor, metadata: Metadata) -> grpc.StatusCode:
    """Calls `method` with an empty request (raw bytes: every RPC alike); returns its status."""
    name, codec = full_name(method), {"request_serializer": _raw, "response_deserializer": _raw}
    try:
        if method.client_streaming:
            async for _ in channel.stream_stream(name, **codec)(iter([b""]), metadata=metadata, timeout=5):
                pass
        elif method.server_streaming:
            async for _ in channel.unary_stream(name, **codec)(b"", metadata=metadata, timeout=5):
                pass
        else:
            await channel.unary_unary(name, **codec)(b"", metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir, shards=1) as feed:
        yield feed


async def test_every_rpc_refuses_missing_wrong_and_underprivileged_credentials(
    feed: FeedUnderTest, database_url: str
) -> None:
    """AUTH_MODE=api_key, every server real: no token and a wrong token are UNAUTHENTICATED
    everywhere; a user token is refused on every internal RPC (PERMISSION_DENIED, or
    UNAUTHENTICATED at a shard, which knows only the service key)."""
    service = feed.subscription
    async with running_scheduler(service, database_url, ManualClock(at(FRIDAY, 20)), lead=False) as scheduler:
        addresses = {
            "dataserver.registry.v1.RegistryService": service.settings.registry_addr,
            "dataserver.subscription.v1.SubscriptionService": service.address,
            "dataserver.scheduler.v1.SchedulerService": scheduler.scheduler.app.address,
            "dataserver.feed.v1.GatewayService": feed.gateway.app.address,
            "dataserver.feed.v1.ShardService": feed.shards[0].app.address,
        }
        user = await service.user("mallory")
        refused = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
        unauthenticated = {grpc.StatusCode.UNAUTHENTICATED}
        wrong: list[str] = []
        tried = 0
        for method in every_method():
            name = full_name(method)
            cases = [("no token", (), unauthenticated), ("wrong token", WRONG, unauthenticated)]
            if name not in USER_RPCS:
                cases.append(("user token", user, refused))
            async with grpc.aio.insecure_channel(addresses[method.containing_service.full_name]) as channel:
                for label, metadata, expected in cases:
                    tried += 1
                    code = await call(channel, method, metadata)
                    if code not in expected:
                        wrong.append(f"{name} with {label}: {code.name}")
        assert not wrong, "\n".join(wrong)
        assert tried >= 2 * 39 + len(PRIVILEGED_RPCS)
        # The gateway follows the shard with the service key (the shard accepts nothing else).
        await eventually(lambda: feed.gateway.hub.links[0].connected, what="the gateway following the shard")


@pytest_asyncio.fixture(loop_scope="session")
async def service(database_url: str, masters_dir: Path) -> AsyncIterator[SubscriptionUnderTest]:
    async with running_subscription(database_url, masters_dir) as running:
        yield running


async def test_a_user_reads_and_changes_only_their_own_watchlist(service: SubscriptionUnderTest) -> None:
    alice, bob = await service.user("alice"), await service.user("bob")
    stub = service.stub
    added = await stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="RELIANCE"), metadata=alice)
    item_id = added.watchlist_item.item_id
    denied = grpc.StatusCode.PERMISSION_DENIED
    await expect_status(stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(user_id="alice"), metadata=bob), denied)
    await expect_status(
        stub.AddWatchlistItem(pb.AddWatchlistItemRequest(user_id="alice", symbol="TCS"), metadata=bob), denied
    )
    await expect_status(
        stub.RemoveWatchlistItem(pb.RemoveWatchlistItemRequest(user_id="alice", item_id=item_id), metadata=bob), denied
    )
    # Naming alice's item as bob's own: not bob's, so not found (and alice's item stays).
    await expect_status(
        stub.RemoveWatchlistItem(pb.RemoveWatchlistItemRequest(item_id=item_id), metadata=bob),
        grpc.StatusCode.NOT_FOUND,
    )
    recenter = pb.RecenterChainRequest(item_id=item_id, underlying_price=1500.0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RecenterChain(recenter, metadata=bob)
    assert raised.value.code() in {grpc.StatusCode.NOT_FOUND, denied}
    await expect_status(stub.ListAuditEntries(pb.ListAuditEntriesRequest(user_id="alice"), metadata=bob), denied)
    await expect_status(
        stub.RecordUsage(pb.RecordUsageRequest(user_id="alice", item_ids=[item_id]), metadata=bob), denied
    )
    events = stub.WatchWatchlistEvents(pb.WatchWatchlistEventsRequest(user_id="-"), metadata=bob)
    await expect_status(events.read(), denied)
    assert not (await stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=bob)).watchlist_items
    mine = await stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=alice)
    assert [i.item_id for i in mine.watchlist_items] == [item_id]
    status = await stub.GetSubscriptionStatus(pb.GetSubscriptionStatusRequest(), metadata=bob)
    assert "alice" not in {u.user_id for u in status.users}


async def test_a_user_does_not_see_other_users_as_owners(service: SubscriptionUnderTest) -> None:
    """Other users' owner entries stay (they add up to ref_count) with their ids emptied."""
    alice, bob = await service.user("alice"), await service.user("bob")
    a = await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="RELIANCE"), metadata=alice)
    b = await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="RELIANCE"), metadata=bob)
    key = a.watchlist_item.underlying
    seen = await service.stub.GetSubscription(pb.GetSubscriptionRequest(key=key), metadata=bob)
    owners = seen.subscription.owners
    assert seen.subscription.ref_count == len(owners) == 2
    assert sorted((o.user_id, o.item_id) for o in owners) == sorted([("", ""), ("bob", b.watchlist_item.item_id)])
    assert all(e.user_id in ("", "bob") and "alice" not in e.actor + e.reason for e in seen.history)
    listed = await service.stub.ListSubscriptions(pb.ListSubscriptionsRequest(page_size=1000), metadata=bob)
    assert listed.subscriptions
    assert {o.user_id for s in listed.subscriptions for o in s.owners} <= {"", "bob"}
    # An admin sees both owners.
    full = await service.stub.GetSubscription(pb.GetSubscriptionRequest(key=key), metadata=service.admin)
    assert {o.user_id for o in full.subscription.owners} == {"alice", "bob"}
    assert any(e.user_id == "alice" for e in full.history)  # what bob's view left out


async def test_expired_and_revoked_keys_are_refused(service: SubscriptionUnderTest) -> None:
    request = pb.ListWatchlistItemsRequest()
    soon = datetime.now(UTC) + timedelta(hours=1)
    valid = bearer(await create_api_key(service.pool, "carol", "user", expires_at=soon))
    await service.stub.ListWatchlistItems(request, metadata=valid)
    past = datetime.now(UTC) - timedelta(seconds=1)
    expired = bearer(await create_api_key(service.pool, "carol", "user", expires_at=past))
    details = await expect_status(
        service.stub.ListWatchlistItems(request, metadata=expired), grpc.StatusCode.UNAUTHENTICATED
    )
    assert "expired" in details
    revoked = bearer(await create_api_key(service.pool, "dave", "user"))
    await service.rows("UPDATE api_keys SET revoked_at = now() WHERE user_id = 'dave' RETURNING user_id")
    await expect_status(service.stub.ListWatchlistItems(request, metadata=revoked), grpc.StatusCode.UNAUTHENTICATED)


async def test_a_service_key_is_not_an_admin_key_but_may_call_internal_rpcs(service: SubscriptionUnderTest) -> None:
    token = service.settings.service_token or ""
    rows = await service.rows("SELECT role FROM api_keys WHERE user_id = 'service'")
    assert [r["role"] for r in rows] == ["service"]
    reply = await service.stub.GetTierBPlan(pb.GetTierBPlanRequest(), metadata=bearer(token))
    assert reply is not None
    await service.stub.Rebalance(pb.RebalanceRequest(dry_run=True), metadata=bearer(token))


async def test_rate_limit_gives_resource_exhausted_with_retry_info(database_url: str, masters_dir: Path) -> None:
    async with running_subscription(
        database_url, masters_dir, rate_limit_burst=2, rate_limit_per_second=0.05
    ) as service:
        erin = await service.user("erin")
        for symbol in ("RELIANCE", "TCS"):
            await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol=symbol), metadata=erin)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await service.stub.RemoveWatchlistItem(pb.RemoveWatchlistItemRequest(item_id="1"), metadata=erin)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay = retry_delay(raised.value)
        assert delay is not None and 0 < delay <= 20.0
        assert "rate limit" in (raised.value.details() or "")
        # Reads are not limited; another user has a bucket of their own; admins are exempt.
        await service.stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=erin)
        frank = await service.user("frank")
        await service.stub.AddWatchlistItem(pb.AddWatchlistItemRequest(symbol="INFY"), metadata=frank)
        for _ in range(4):
            await service.stub.AddWatchlistItem(
                pb.AddWatchlistItemRequest(user_id="erin", symbol="RELIANCE"), metadata=service.admin
            )


def test_token_bucket_refills_at_its_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("u", "AddWatchlistItem")
    with pytest.raises(RateLimited) as raised:
        limiter.take("u", "AddWatchlistItem")
    assert raised.value.retry_after == pytest.approx(0.5)
    now[0] += 0.5
    limiter.take("u", "AddWatchlistItem")
    now[0] += 100.0  # refills to the burst, not beyond
    for _ in range(3):
        limiter.take("u", "AddWatchlistItem")
    with pytest.raises(RateLimited):
        limiter.take("u", "AddWatchlistItem")


def test_security_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RATE_LIMIT_BURST"):
        load_settings({"RATE_LIMIT_BURST": "0"})
    with pytest.raises(ConfigError, match="RATE_LIMIT_PER_SECOND"):
        load_settings({"RATE_LIMIT_PER_SECOND": "-1"})
    with pytest.raises(ConfigError, match="TLS_CERT_FILE"):
        load_settings({"TLS_CERT_FILE": str(tmp_path / "missing.pem")})
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        load_settings({"TLS_CERT_FILE": str(cert)})


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_tls_round_trip(database_url: str, masters_dir: Path, tmp_path: Path) -> None:
    """A server given a certificate serves TLS only; a client trusting it (TLS_CA_FILE) calls it."""
    cert_file, key_file = self_signed(tmp_path)
    settings = load_settings({"TLS_CERT_FILE": str(cert_file), "TLS_KEY_FILE": str(key_file), "AUTH_MODE": "api_key"})
    settings = dataclasses.replace(
        settings,
        data_dir=masters_dir.parent,
        master_source="generated",
        master_scale="small",
        shutdown_grace_seconds=0,
        grpc_port=0,
        tls_ca_file=None,
    )
    pool = await open_pool(database_url, max_size=2)
    clock = ManualClock(datetime.combine(TRADING_DATE, time(10, 0), IST))
    registry = create_registry(settings, pool, prices=NoLastPrices(), clock=clock)
    registry.config.cache_dir = masters_dir
    request = registry_pb2.GetMasterStatusRequest()
    try:
        async with registry.app:
            user = bearer(await create_api_key(pool, "alice", "user"))
            configure_client_tls(cert_file)
            async with open_channel(f"localhost:{registry.app.port}") as channel:
                reply = await registry_pb2_grpc.RegistryServiceStub(channel).GetMasterStatus(request, metadata=user)
                assert reply.HasField("status")
            configure_client_tls(None)
            async with open_channel(registry.app.address) as plaintext:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await registry_pb2_grpc.RegistryServiceStub(plaintext).GetMasterStatus(
                        request, metadata=user, timeout=5
                    )
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        configure_client_tls(None)
        await pool.close()


def test_defaults_keep_plaintext_and_limits() -> None:
    settings = Settings()
    assert settings.tls_cert_file is None and settings.tls_ca_file is None
    assert settings.rate_limit_per_second > 0 and settings.rate_limit_burst >= 1


def apikeys(database_url: str, *args: str) -> str:
    """Runs the admin CLI as an operator does; returns its output."""
    environment = {**os.environ, "DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "services.common.apikeys", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_admin_cli_creates_lists_and_revokes_keys(service: SubscriptionUnderTest, database_url: str) -> None:
    token = (await asyncio.to_thread(apikeys, database_url, "create", "--user", "gina", "--expires", "30d")).strip()
    assert token.startswith("dsk_")
    gina = bearer(token)
    await service.stub.ListWatchlistItems(pb.ListWatchlistItemsRequest(), metadata=gina)
    created = await asyncio.to_thread(apikeys, database_url, "create", "--user", "svc", "--role", "service")
    listing = await asyncio.to_thread(apikeys, database_url, "list")
    assert token not in listing and created.strip() not in listing
    line = next(row for row in listing.splitlines() if " gina " in row)
    key_id = line.split()[0]
    assert len(key_id) == 12 and "active" in line and "expires never" not in line
    assert any(" svc " in row and " service " in row for row in listing.splitlines())
    revoked = await asyncio.to_thread(apikeys, database_url, "revoke", "--id", key_id)
    assert "revoked 1 key" in revoked
    assert " gina " not in await asyncio.to_thread(apikeys, database_url, "list")
    every = await asyncio.to_thread(apikeys, database_url, "list", "--all")
    assert any(" gina " in row and "revoked" in row for row in every.splitlines())
    with pytest.raises(subprocess.CalledProcessError):
        await asyncio.to_thread(apikeys, database_url, "create", "--user", "x", "--expires", "someday")
