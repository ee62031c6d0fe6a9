"""Credentials never appear (issue 14 §2): the whole stack runs as processes with two accounts
of distinctive client ids and tokens, against its own simulator process; one token is rotated
through the admin RPC; then no log line of any process, no /metrics page and no status
answer holds a client id or any of the tokens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import IO, TypeVar

import grpc
import pytest
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc
from google.protobuf import text_format

from services.common.clock import clock_from_settings, trading_date_of
from services.common.config import load_settings
from services.stack.__main__ import plan
from tests.stack_fixtures import free_offset, until

OFFSET = free_offset(3600)
SIMULATOR_PORT = 8765 + OFFSET + 10  # beside the stack's own ports
CLIENT_IDS = {"alpha": "CLIDALPHA91372", "beta": "CLIDBETA44218"}
TOKENS = {"alpha": "TOKALPHAold7f3e9", "beta": "TOKBETAold9c1d2"}
NEW_TOKEN = "TOKALPHAnew55aa1"
SECRETS = (*CLIENT_IDS.values(), *TOKENS.values(), NEW_TOKEN)
T = TypeVar("T")


def _drain(stream: IO[str], into: list[str]) -> None:
    into.extend(stream)


class Processes:
    def __init__(self) -> None:
        self.lines: list[str] = []  # every line any process wrote to stdout or stderr
        self.started: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.append(process)
        for stream in (process.stdout, process.stderr):
            threading.Thread(target=_drain, args=(stream, self.lines), daemon=True).start()
        return process

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    root = tmp_path_factory.mktemp("credentials")
    for name in CLIENT_IDS:
        (root / "accounts" / name).mkdir(parents=True)
        (root / "accounts" / name / "client_id").write_text(CLIENT_IDS[name] + "\n")
        (root / "accounts" / name / "access_token").write_text(TOKENS[name] + "\n")
    env = {
        **os.environ,
        "DATASERVER_DATA_DIR": str(root / "data"),
        "MASTER_SCALE": "small",
        "MASTER_SOURCE": "generated",
        "STACK_PORT_OFFSET": str(OFFSET),
        "LOG_LEVEL": "INFO",
        "DHAN_ACCOUNTS": ",".join(CLIENT_IDS),
        "DHAN_ACCOUNTS_DIR": str(root / "accounts"),
        "FEED_CONNECTIONS": "1",
        "FEED_URL": f"ws://127.0.0.1:{SIMULATOR_PORT}",
        "SHARD_HEALTH_REPORT_SECONDS": "0.5",
    }
    env.pop("DATABASE_URL", None)
    settings = load_settings(env)
    processes = Processes()
    try:
        # Real accounts: the stack starts no simulator of its own; this one plays Dhan.
        processes.start(
            [
                sys.executable,
                "-m",
                "simulator",
                "--port",
                str(SIMULATOR_PORT),
                "--control-port",
                str(SIMULATOR_PORT + 1),
                "--master-cache-dir",
                str(settings.data_dir / "masters"),
                "--master-scale",
                "small",
                "--master-seed",
                str(settings.master_seed),
                "--trading-date",
                trading_date_of(clock_from_settings(settings)).isoformat(),
                "--log-level",
                "INFO",
            ],
            env,
        )
        stack = processes.start([sys.executable, "-m", "services.stack"], env)
        until(
            lambda: any("Ctrl-C stops everything" in line for line in processes.lines) or stack.poll() is not None,
            150,
            "the stack's banner",
        )
        assert stack.poll() is None, "".join(processes.lines[-50:])
        yield processes
    finally:
        processes.stop()


def _shards(gateway: feed_pb2_grpc.GatewayServiceStub) -> list[feed_pb2.ShardStatus]:
    return list(gateway.GetShardStatus(feed_pb2.GetShardStatusRequest(), timeout=5).shards)


def _metrics_pages() -> dict[str, str]:
    settings = load_settings({"STACK_PORT_OFFSET": str(OFFSET), "FEED_CONNECTIONS": "1", "FEED_ACCOUNTS": "2"})
    pages = {}
    for process in plan(settings):
        if process.metrics_port:
            with urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=10) as reply:
                pages[process.name] = reply.read().decode()
    return pages


def test_no_credential_appears_in_logs_metrics_or_status(stack: Processes) -> None:
    started = time.monotonic()
    with (
        grpc.insecure_channel(f"127.0.0.1:{50052 + OFFSET}") as subscription_channel,
        grpc.insecure_channel(f"127.0.0.1:{50053 + OFFSET}") as gateway_channel,
    ):
        subscription = subscription_pb2_grpc.SubscriptionServiceStub(subscription_channel)
        gateway = feed_pb2_grpc.GatewayServiceStub(gateway_channel)
        connected = feed_pb2.CONNECTION_STATE_CONNECTED
        until(lambda: all(s.connection_state == connected for s in _shards(gateway)), 60, "both shards connected")
        rotated = subscription.RotateAccessToken(
            subscription_pb2.RotateAccessTokenRequest(account_id="alpha", access_token=NEW_TOKEN), timeout=10
        )
        assert rotated.credentials_version == 1
        # Shard 0 (alpha's) reconnects with the new token.
        until(lambda: any("access token replaced" in line for line in stack.lines), 30, "the shard to take the token")
        until(
            lambda: (
                all(s.connection_state == connected for s in _shards(gateway)) and _shards(gateway)[0].reconnect_count
            ),
            30,
            "shard 0 reconnected",
        )
        answers = [
            text_format.MessageToString(
                subscription.GetSubscriptionStatus(subscription_pb2.GetSubscriptionStatusRequest(), timeout=10)
            ),
            text_format.MessageToString(gateway.GetShardStatus(feed_pb2.GetShardStatusRequest(), timeout=10)),
        ]
    pages = _metrics_pages()
    assert {"subscription", "gateway", "shard-0", "shard-1"} <= pages.keys(), pages.keys()
    assert 'feed_shard_credentials_version{shard="0"} 1.0' in pages["shard-0"]
    lines = list(stack.lines)
    assert len(lines) > 20 and any("access token rotated" in line for line in lines)
    for secret in SECRETS:
        assert not [line for line in lines if secret in line], f"a log line holds {secret[:4]}…"
        assert not [name for name, page in pages.items() if secret in page], f"a metrics page holds {secret[:4]}…"
        assert not [answer for answer in answers if secret in answer], f"a status answer holds {secret[:4]}…"
    assert time.monotonic() - started < 60
