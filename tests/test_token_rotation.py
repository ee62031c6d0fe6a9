"""Token rotation without a restart (issue 14 §2): an account's access token replaced through
the admin RPC, or by its mounted token file, reconnects the account's shards with it; after
an 807 the shards wait (no connection attempt) and resume once a new token arrives. Terminals
see stale, then live. On real parts: the simulator (its expire-token call), shards, gateway,
subscription service and Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from dataserver.feed.v1 import feed_pb2
from dataserver.subscription.v1 import subscription_pb2 as spb
from grpc_health.v1 import health_pb2

from services.common.accounts import Account, simulated_account
from services.common.clients import health_stub
from services.dhan import DisconnectPacket
from services.feed.shard.runtime import ShardRuntime
from simulator.settings import SimulatorSettings
from simulator.simulator import Simulator
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.subscription_fixtures import SubscriptionUnderTest, running_subscription
from tests.test_feed_gateway import gateway_stub, read_until
from tests.test_simulator import Client
from tests.test_subscription_capacity import add
from tests.test_upstream_status import RELIANCE, control, is_upstream, live_values, open_stream, shards_live

# The service tells shards the current version in every health report's answer: report often.
FAST_REPORTS = {"shard_health_report_seconds": 0.2}


def tokens_on_broker(feed: FeedUnderTest, client_id: str) -> list[str]:
    return [c.token for c in feed.simulator._feed().connections() if c.client_id == client_id]


async def rotate(service: SubscriptionUnderTest, account_id: str, token: str) -> spb.RotateAccessTokenResponse:
    return await service.stub.RotateAccessToken(
        spb.RotateAccessTokenRequest(account_id=account_id, access_token=token), metadata=service.admin
    )


async def serving(shard_address: str) -> int:
    async with grpc.aio.insecure_channel(shard_address) as channel:
        reply = await health_stub(channel).Check(health_pb2.HealthCheckRequest())
    return int(reply.status)


async def test_rotation_mid_stream_reconnects_the_account_s_shards_with_the_new_token(
    database_url: str, masters_dir: Path
) -> None:
    async with running_feed(database_url, masters_dir, subscription=FAST_REPORTS) as feed:
        await shards_live(feed)
        runtime = feed.shards[0].runtime
        epoch, client_id = runtime.epoch, runtime.credentials.account.client_id
        assert tokens_on_broker(feed, client_id) == ["sim-token-1"]
        await add(feed.subscription, "alice", "RELIANCE", underlying_only=True)
        await live_values(feed, RELIANCE)
        channel, _ = gateway_stub(feed)
        async with channel:
            stream = open_stream(feed, channel, [RELIANCE])
            assert not (await stream.read()).snapshot.instruments[0].stale
            rotated = await rotate(feed.subscription, "sim-1", "sim-token-1-rotated")
            assert rotated.account_id == "sim-1" and rotated.credentials_version == 1 and rotated.rotated_at.seconds
            interrupted = (await read_until(stream, is_upstream)).event.upstream
            assert interrupted.state == feed_pb2.UPSTREAM_STATE_INTERRUPTED and list(interrupted.instruments) == [
                RELIANCE
            ]
            assert (
                interrupted.cause == feed_pb2.UPSTREAM_CAUSE_RECONNECTING and "new access token" in interrupted.reason
            )
            restored = (await read_until(stream, is_upstream)).event.upstream
            assert restored.state == feed_pb2.UPSTREAM_STATE_RESTORED and list(restored.instruments) == [RELIANCE]
            stream.cancel()
        # The same shard process, reconnected with the new token; the old socket is gone.
        assert runtime.epoch == epoch and runtime.credentials.version == 1
        assert tokens_on_broker(feed, client_id) == ["sim-token-1-rotated"]
        # The same token again changes nothing.
        again = await rotate(feed.subscription, "sim-1", "sim-token-1-rotated")
        assert again.credentials_version == 1 and again.rotated_at == rotated.rotated_at
        current = await feed.subscription.stub.GetAccountCredentials(
            spb.GetAccountCredentialsRequest(account_id="sim-1"), metadata=feed.subscription.admin
        )
        assert current.access_token == "sim-token-1-rotated" and current.credentials_version == 1


async def test_after_807_the_shard_waits_without_retrying_then_resumes_with_a_rotated_token(
    database_url: str, masters_dir: Path
) -> None:
    # Two accounts of one connection each: shard 0 is sim-1's, shard 1 sim-2's.
    accounts = (simulated_account(1), simulated_account(2))
    per_account: dict[str, Any] = {"accounts": accounts, "feed_connections_per_account": 1}
    async with running_feed(
        database_url, masters_dir, shards=2, subscription={**FAST_REPORTS, **per_account}, **per_account
    ) as feed:
        await shards_live(feed)
        waiting, other = feed.shards[0].runtime, feed.shards[1].runtime
        assert (waiting.account_id, other.account_id) == ("sim-1", "sim-2")
        await add(feed.subscription, "alice", "RELIANCE", underlying_only=True)
        await live_values(feed, RELIANCE)
        rows = await feed.subscription.rows("SELECT shard_id FROM subscriptions")
        assert {r["shard_id"] for r in rows} == {0}, rows  # the emptier shard first: shard 0 holds it
        channel, _ = gateway_stub(feed)
        async with channel:
            stream = open_stream(feed, channel, [RELIANCE])
            await stream.read()
            expired = await control(feed, "POST", f"/clients/{accounts[0].client_id}/expire-token")
            assert len(expired["affected"]) == 1
            interrupted = (await read_until(stream, is_upstream)).event.upstream
            assert interrupted.cause == feed_pb2.UPSTREAM_CAUSE_STOPPED and interrupted.disconnect_code == 807
            await _expect_waiting(feed, waiting)
            await _expect_no_attempts_while_another_shard_reconnects(feed, other)
            # A new token: the shard resumes by itself, and the terminal sees the instrument live.
            await rotate(feed.subscription, "sim-1", "sim-token-1-next")
            restored = (await read_until(stream, is_upstream, timeout=15)).event.upstream
            assert restored.state == feed_pb2.UPSTREAM_STATE_RESTORED and list(restored.instruments) == [RELIANCE]
            stream.cancel()
        assert tokens_on_broker(feed, accounts[0].client_id) == ["sim-token-1-next"]
        assert waiting.state == feed_pb2.CONNECTION_STATE_CONNECTED and not waiting.credentials.waiting
        ok = health_pb2.HealthCheckResponse.SERVING
        await eventually(lambda: _is(serving(feed.shards[0].app.address), ok), what="the resumed shard SERVING")


async def _expect_waiting(feed: FeedUnderTest, runtime: ShardRuntime) -> None:
    """Stopped, waiting for credentials, NOT_SERVING, and the service told why."""
    await eventually(lambda: runtime.credentials.waiting, what="the refused shard waiting for credentials")
    assert runtime.state == feed_pb2.CONNECTION_STATE_STOPPED
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    address = feed.shards[0].app.address
    await eventually(lambda: _is(serving(address), not_serving), what="the waiting shard NOT_SERVING")

    async def reported() -> bool:
        rows = await feed.subscription.rows("SELECT reason FROM shard_health WHERE shard_id = 0")
        return bool(rows) and "access token is replaced" in rows[0]["reason"]

    await eventually(reported, what="the waiting shard's health report")


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _expect_no_attempts_while_another_shard_reconnects(feed: FeedUnderTest, other: ShardRuntime) -> None:
    """No retry storm: while the other account's shard reconnects twice (two handshakes), the
    waiting one opens none."""
    handshakes = (await control(feed, "GET", "/health"))["handshakes"]
    for _ in range(2):
        reconnects = other.reconnect_count
        target = next(c.id for c in feed.simulator.connections() if c.client_id == other.credentials.account.client_id)
        await control(feed, "POST", f"/connections/{target}/drop")

        def reconnected(before: int = reconnects) -> bool:
            return other.reconnect_count > before and other.state == feed_pb2.CONNECTION_STATE_CONNECTED

        await eventually(reconnected, what="the other shard reconnected")
    assert (await control(feed, "GET", "/health"))["handshakes"] == handshakes + 2
    assert feed.shards[0].runtime.state == feed_pb2.CONNECTION_STATE_STOPPED


async def test_a_changed_token_file_rotates_the_account_without_an_rpc(
    database_url: str, masters_dir: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "main" / "access_token"
    token_file.parent.mkdir()
    token_file.write_text("file-token-one\n")
    account = Account("main", "7700000001", access_token_file=token_file)
    per_account: dict[str, Any] = {"accounts": (account,), "feed_connections_per_account": 1}
    async with running_feed(
        database_url,
        masters_dir,
        subscription={**FAST_REPORTS, **per_account},
        feed_token_file_poll_seconds=0.05,
        **per_account,
    ) as feed:
        await shards_live(feed)
        assert tokens_on_broker(feed, "7700000001") == ["file-token-one"]
        token_file.write_text("file-token-two\n")  # as the kubelet swaps a Secret's content
        await eventually(
            lambda: tokens_on_broker(feed, "7700000001") == ["file-token-two"], what="the file's token in use"
        )
        current = await feed.subscription.stub.GetAccountCredentials(
            spb.GetAccountCredentialsRequest(account_id="main"), metadata=feed.subscription.admin
        )
        assert current.access_token == "file-token-two" and current.credentials_version == 1
        assert feed.shards[0].runtime.credentials.version == 1


@pytest.fixture
async def service(database_url: str, masters_dir: Path) -> Any:
    async with running_subscription(database_url, masters_dir) as running:
        yield running


async def test_rotation_refuses_bad_input_and_users(service: SubscriptionUnderTest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await rotate(service, "nobody", "tok-secret-1")
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "accepted sim-1" in str(unknown.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await rotate(service, "sim-1", "  ")
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "access_token" in str(empty.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as spaced:
        await rotate(service, "sim-1", "tok secret 2")
    assert spaced.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "secret" not in str(spaced.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as never:
        await service.stub.GetAccountCredentials(
            spb.GetAccountCredentialsRequest(account_id="sim-1"), metadata=service.admin
        )
    assert never.value.code() == grpc.StatusCode.NOT_FOUND
    user = await service.user("alice")
    for call in (
        service.stub.RotateAccessToken(
            spb.RotateAccessTokenRequest(account_id="sim-1", access_token="x1"), metadata=user
        ),
        service.stub.GetAccountCredentials(spb.GetAccountCredentialsRequest(account_id="sim-1"), metadata=user),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await rotate(service, "sim-1", "tok-secret-3")).credentials_version == 1
    assert (await rotate(service, "sim-1", "tok-secret-4")).credentials_version == 2
    health = await service.stub.ReportShardHealth(
        spb.ReportShardHealthRequest(shard_id=0, shard_epoch="e1", connected=True, account_id="sim-1"),
        metadata=service.admin,
    )
    assert health.credentials_version == 2


async def test_the_simulator_expires_a_client_s_token(masters_dir: Path) -> None:
    sim = Simulator(SimulatorSettings(port=0, control_port=0, master_cache_dir=masters_dir, master_scale="small"))
    await sim.start()
    try:
        async with (
            Client.open(sim.url(token="today", client_id="C1")) as expiring,
            Client.open(sim.url(token="today", client_id="C2")) as other_client,
        ):
            await eventually(lambda: len(sim.connections()) == 2, what="both connections registered")
            [expired_id] = [c.id for c in sim.connections() if c.client_id == "C1"]
            assert sim.expire_token("C1") == [expired_id]
            packets, _ = await expiring.closed()
            assert packets[-1] == DisconnectPacket(0, 0, 807)
            assert [c.client_id for c in sim.connections()] == ["C2"], "another client id is untouched"
            del other_client
        async with Client.open(sim.url(token="today", client_id="C1")) as refused:
            packets, _ = await refused.closed()
            assert packets == [DisconnectPacket(0, 0, 807)], "the expired token is refused from then on"
        async with Client.open(sim.url(token="tomorrow", client_id="C1")):
            await eventually(lambda: [c.client_id for c in sim.connections()].count("C1") == 1, what="a new token")
    finally:
        await sim.stop()
