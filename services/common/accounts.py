"""Broker accounts: who the feed connects as, and which shard belongs to which account.

An account is a Dhan client id and an access token; each brings its own connections
(5 x 5,000 instruments at Dhan). Shard ids run over every account in the configured order:
shard `s` is connection `s % per_account` of account `s // per_account`, so an account
added at the end of the list adds shards without renumbering the others.

Where accounts come from, read once at start-up (`load_accounts`):
- `DHAN_ACCOUNTS=main,second` with `DHAN_ACCOUNTS_DIR` holding one directory per account
  (`<dir>/<account>/client_id` and `<dir>/<account>/access_token`: a Kubernetes Secret
  mounted per account). The token file is re-read when it changes (token rotation).
- `DHAN_CLIENT_ID` and `DHAN_ACCESS_TOKEN`: one account, named "default".
- Neither: `FEED_ACCOUNTS` simulated accounts (default 1), "sim-1", "sim-2", ..., which the
  local simulator knows.

Credentials never leave this module's objects in a printable form: `repr` hides them, and
logs name accounts by `account_id` only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MAX_ACCOUNTS = 20
_ACCOUNT_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


class AccountsError(ValueError):
    """The account configuration is unusable; the message says what is accepted."""


@dataclass(frozen=True)
class Account:
    account_id: str  # a name for people, logs and metrics; never a credential
    client_id: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)  # the start-up token, if given inline
    access_token_file: Path | None = None  # read (and re-read when it changes) for the token
    simulated: bool = False

    def initial_token(self) -> str:
        """The token at start-up: the file's content when there is a file, else the inline one."""
        if self.access_token_file is not None:
            try:
                return self.access_token_file.read_text().strip()
            except OSError as error:
                raise AccountsError(
                    f"account {self.account_id}: cannot read its access token file ({error.strerror})"
                ) from None
        return self.access_token or ""


def simulated_account(number: int) -> Account:
    """The n-th (1-based) account the local simulator knows."""
    return Account(f"sim-{number}", str(1_000_000_000 + number), f"sim-token-{number}", simulated=True)


SIMULATED = (simulated_account(1),)


def load_accounts(env: Mapping[str, str]) -> tuple[Account, ...]:
    names = [n.strip() for n in env.get("DHAN_ACCOUNTS", "").split(",") if n.strip()]
    client_id, token = env.get("DHAN_CLIENT_ID"), env.get("DHAN_ACCESS_TOKEN")
    count = env.get("FEED_ACCOUNTS")
    if names:
        if client_id or token:
            raise AccountsError(
                "set DHAN_ACCOUNTS (with DHAN_ACCOUNTS_DIR) or DHAN_CLIENT_ID/DHAN_ACCESS_TOKEN, not both"
            )
        accounts = _from_directory(names, env.get("DHAN_ACCOUNTS_DIR", ""))
    elif client_id and token:
        accounts = (Account("default", client_id, token),)
    elif client_id or token:
        raise AccountsError("DHAN_CLIENT_ID and DHAN_ACCESS_TOKEN go together; set both, or neither for the simulator")
    else:
        accounts = tuple(simulated_account(n) for n in range(1, _count(count) + 1))
    if count is not None and _count(count) != len(accounts):
        raise AccountsError(f"FEED_ACCOUNTS={count} but {len(accounts)} account(s) are configured; drop one or match")
    return accounts


def _count(raw: str | None) -> int:
    if raw is None:
        return 1
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_ACCOUNTS:
        raise AccountsError(f"FEED_ACCOUNTS={raw!r} is not accepted; expected a whole number 1..{MAX_ACCOUNTS}")
    return value


def _from_directory(names: list[str], directory: str) -> tuple[Account, ...]:
    if not directory:
        raise AccountsError("DHAN_ACCOUNTS needs DHAN_ACCOUNTS_DIR, the directory with one subdirectory per account")
    if len(names) > MAX_ACCOUNTS or len(set(names)) != len(names):
        raise AccountsError(f"DHAN_ACCOUNTS must name 1..{MAX_ACCOUNTS} distinct accounts")
    accounts = []
    for name in names:
        if not _ACCOUNT_ID.match(name):
            raise AccountsError(f"account name {name!r} is not accepted; use lower-case letters, digits and '-'")
        home = Path(directory) / name
        try:
            client_id = (home / "client_id").read_text().strip()
        except OSError:
            raise AccountsError(f"account {name}: {home / 'client_id'} is missing or unreadable") from None
        account = Account(name, client_id, access_token_file=home / "access_token")
        if not client_id or not account.initial_token():
            raise AccountsError(f"account {name}: client_id and access_token must not be empty")
        accounts.append(account)
    return tuple(accounts)


@dataclass(frozen=True)
class ShardPlace:
    """Where a shard sits: its account and its connection index within that account."""

    account: Account
    connection_index: int


def shard_place(accounts: tuple[Account, ...], per_account: int, shard_id: int) -> ShardPlace:
    index, connection = divmod(shard_id, per_account)
    if not 0 <= index < len(accounts):
        raise AccountsError(
            f"shard {shard_id} is outside the {len(accounts)} account(s) x {per_account} connections configured"
        )
    return ShardPlace(accounts[index], connection)
