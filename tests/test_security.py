"""Issue 15 §2: roles, every RPC refused without the right credentials, users kept to their
own data, key expiry and revocation, TLS, per-user rate limits."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dataserver
import grpc
import pytest
import pytest_asyncio
from dataserver.subscription.v1 import subscription_pb2 as pb
from google.protobuf.descriptor import MethodDescriptor

from services.common.access import PRIVILEGED_RPCS, USER_RPCS
from services.common.auth import create_api_key
from tests.feed_fixtures import FeedUnderTest, running_feed
from tests.registry_fixtures import bearer
from tests.scheduler_fixtures import SchedulerUnderTest, running_scheduler
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription

WRONG = bearer("dsk_not-a-key")


def every_method() -> list[MethodDescriptor]:
    """Every RPC of every service in our generated descriptors, so a new RPC is covered."""
    methods = []
    for module in pkgutil.walk_packages(dataserver.__path__, "dataserver."):
        if not module.name.endswith("_pb2"):
            continue
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


async def call(
    channel: grpc.aio.Channel, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    """Calls `method` with an empty request (raw bytes: every RPC alike); returns its status."""
    name = full_name(method)
    try:
        if method.client_streaming:
            stream = channel.stream_stream(name)(iter([b""]), metadata=metadata, timeout=5)
            async for _ in stream:
                pass
        elif method.server_streaming:
            async for _ in channel.unary_stream(name)(b"", metadata=metadata, timeout=5):
                pass
        else:
            await channel.unary_unary(name)(b"", metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir, shards=1) as feed:
        yield feed


@pytest.mark.asyncio(loop_scope="session")
async def test_every_rpc_refuses_missing_wrong_and_underprivileged_credentials(
    feed: FeedUnderTest, database_url: str
) -> None:
    service = feed.subscription
    from services.common.clock import ManualClock
    from tests.scheduler_fixtures import FRIDAY, at

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
        wrong: list[str] = []
        for method in every_method():
            name = full_name(method)
            async with grpc.aio.insecure_channel(addresses[method.containing_service.full_name]) as channel:
                for label, metadata, expected in (
                    ("no token", (), {grpc.StatusCode.UNAUTHENTICATED}),
                    ("wrong token", WRONG, {grpc.StatusCode.UNAUTHENTICATED}),
                    ("user token", user, refused if name in PRIVILEGED_RPCS else None),
                ):
                    if expected is None:
                        continue
                    code = await call(channel, method, metadata)
                    if code not in expected:
                        wrong.append(f"{name} with {label}: {code.name}")
        assert not wrong, "\n".join(wrong)
