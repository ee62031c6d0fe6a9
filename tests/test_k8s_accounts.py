"""deploy/k8s agrees with itself about the broker accounts: the feed-shard StatefulSet runs
accounts x FEED_CONNECTIONS shards, the gateway lists every one of them in shard order, and the
shards and the subscription service mount each account's Secret where DHAN_ACCOUNTS_DIR says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from services.common.config import load_settings

BASE = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "base"


def _value(file: str, pattern: str) -> str:
    found = re.findall(pattern, (BASE / file).read_text(), re.MULTILINE)
    assert len(found) == 1, (file, pattern, found)
    return str(found[0])


def test_replicas_gateway_and_secrets_follow_the_accounts(tmp_path: Path) -> None:
    names = _value("accounts.yaml", r'^\s*DHAN_ACCOUNTS: "(.*)"').split(",")
    directory = _value("accounts.yaml", r'^\s*DHAN_ACCOUNTS_DIR: "(.*)"')
    per_account = int(_value("configmap.yaml", r'^\s*FEED_CONNECTIONS: "(\d+)"'))
    replicas = int(_value("feed-shard.yaml", r"^\s*replicas: (\d+)"))
    assert replicas == len(names) * per_account
    addresses = _value("gateway.yaml", r'name: GATEWAY_SHARD_ADDRS\n\s*value: "(.*)"').split(",")
    assert addresses == [f"feed-shard-{n}.feed-shard:50054" for n in range(replicas)]
    for workload in ("feed-shard.yaml", "subscription.yaml"):
        text = (BASE / workload).read_text()
        assert "name: dataserver-accounts" in text and f"mountPath: {directory}" in text, workload
        for name in names:
            for key in ("client_id", "access_token"):
                assert re.search(rf"- key: {key}\n\s*path: {name}/{key}\n", text), (workload, name, key)
            assert f"name: dhan-account-{name}\n" in text, (workload, name)
    # The settings the shards read from that layout: the last ordinal is the last account's.
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "client_id").write_text("1100000001")
        (tmp_path / name / "access_token").write_text("token")
    env = {"DHAN_ACCOUNTS": ",".join(names), "DHAN_ACCOUNTS_DIR": str(tmp_path), "FEED_CONNECTIONS": str(per_account)}
    settings = load_settings({**env, "SHARD_ID": str(replicas - 1)})
    assert settings.feed_connections == replicas and settings.shard_place().account.account_id == names[-1]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_base_renders() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    (shards,) = [doc for doc in rendered.split("\n---\n") if "kind: StatefulSet" in doc]
    assert "name: dataserver-accounts" in shards and "name: dhan-account-main" in shards
    assert "DHAN_ACCESS_TOKEN" not in shards and "DHAN_CLIENT_ID" not in shards  # credentials as files only
