"""Broker accounts from configuration: where they come from, and which shard is whose."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError, load_settings


def _account_dir(root: Path, name: str, client_id: str, token: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "client_id").write_text(client_id + "\n")
    (root / name / "access_token").write_text(token + "\n")


def test_simulated_accounts_multiply_the_connections() -> None:
    one = load_settings({})
    assert [a.account_id for a in one.accounts] == ["sim-1"] and one.feed_connections == 5
    two = load_settings({"FEED_ACCOUNTS": "2", "SHARD_ID": "7"})
    assert two.feed_connections == 10 and not two.dhan_credentials
    place = two.shard_place()
    assert (place.account.account_id, place.connection_index) == ("sim-2", 2)
    assert two.accounts[0].client_id != two.accounts[1].client_id
    with pytest.raises(ConfigError, match=r"0\.\.9"):
        load_settings({"FEED_ACCOUNTS": "2", "SHARD_ID": "10"})
    with pytest.raises(ConfigError, match="FEED_ACCOUNTS"):
        load_settings({"FEED_ACCOUNTS": "zero"})


def test_accounts_from_a_directory_of_secrets(tmp_path: Path) -> None:
    _account_dir(tmp_path, "main", "1100000001", "token-a")
    _account_dir(tmp_path, "second", "1100000002", "token-b")
    env = {"DHAN_ACCOUNTS": "main,second", "DHAN_ACCOUNTS_DIR": str(tmp_path), "FEED_CONNECTIONS": "5"}
    settings = load_settings({**env, "SHARD_ID": "5"})
    assert settings.dhan_credentials and settings.feed_connections == 10
    assert settings.feed_url.startswith("wss://")
    account = settings.shard_place().account
    assert (account.account_id, account.client_id, account.initial_token()) == ("second", "1100000002", "token-b")
    assert "token-b" not in repr(settings) and "1100000002" not in repr(settings)
    with pytest.raises(ConfigError, match="FEED_ACCOUNTS=3"):
        load_settings({**env, "FEED_ACCOUNTS": "3"})
    with pytest.raises(ConfigError, match="third"):
        load_settings({**env, "DHAN_ACCOUNTS": "main,third"})
    with pytest.raises(ConfigError, match="not both"):
        load_settings({**env, "DHAN_CLIENT_ID": "1", "DHAN_ACCESS_TOKEN": "t"})
    with pytest.raises(ConfigError, match="DHAN_ACCOUNTS_DIR"):
        load_settings({"DHAN_ACCOUNTS": "main"})
    with pytest.raises(ConfigError, match="go together"):
        load_settings({"DHAN_ACCESS_TOKEN": "t"})
