"""The access token a shard connects with, and how it follows rotation.

The subscription service's database owns each account's current token and its version
(RotateAccessToken writes it). A shard starts with its configuration's token (version 0) or
the database's when it was rotated; it learns the current version from each health report's
answer and, when it is newer, reads the token (GetAccountCredentials) and reconnects with it.

In Kubernetes the token is a mounted Secret file: the shard re-reads it every few seconds and,
when it changes, rotates the account itself (RotateAccessToken with its service key), so the
database stays the one owner and the account's other shards follow. A shard the broker
refused (807 and the like) waits here, making no connection attempt, until a token arrives.

The token is never logged nor put in a status or an error text: `redact` masks it (and the
client id) in whatever text the broker's client library produced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc
from prometheus_client import Gauge

from services.common.accounts import Account
from services.common.clients import ServiceCaller
from services.feed.shard.broker import feed_url

log = logging.getLogger(__name__)

CALL_TIMEOUT_SECONDS = 5.0

WAITING = Gauge(
    "feed_shard_waiting_for_credentials",
    "1 while the shard is stopped until its account's access token is replaced (807 and the like).",
    ["shard", "account"],
)
VERSION = Gauge(
    "feed_shard_credentials_version", "The version of the access token the shard uses (0: configuration's).", ["shard"]
)


@dataclass(frozen=True)
class _FileState:
    mtime_ns: int
    content: str


def mask(secret: str) -> str:
    """What logs may show of a credential: its last two characters."""
    return "…" + secret[-2:] if len(secret) > 4 else "…"


class ShardCredentials:
    """The token in use. `generation` counts every change of it (a rotation, or a token file
    applied while the service was unreachable); the runtime compares it across a connection."""

    def __init__(
        self, account: Account, base_url: str, shard_id: int, channel: grpc.aio.Channel, service_token: str | None
    ) -> None:
        self.account = account
        self.account_id = account.account_id
        self._base_url = base_url
        self._shard = str(shard_id)
        self._stub = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        self._caller = ServiceCaller("subscription", service_token)
        self._token = account.initial_token()
        self.version = 0
        self.generation = 0
        self.waiting = False
        self._arrived = asyncio.Event()
        self._file: _FileState | None = self._read_file()
        self._unpublished: str | None = None  # a file token the service has not taken yet
        # Told when a new token arrives while connected, so the runtime reconnects with it.
        self.on_new_token: Callable[[], object] = lambda: None
        VERSION.labels(self._shard).set(0)

    def url(self) -> str:
        return feed_url(self._base_url, self.account.client_id, self._token)

    def redact(self, text: str) -> str:
        """`text` without the token or the client id (library errors may quote the URL)."""
        for secret in (self._token, self.account.client_id):
            if secret:
                text = text.replace(secret, mask(secret))
        return text

    # -- following the service --------------------------------------------------------------

    async def _fetch(self) -> subscription_pb2.GetAccountCredentialsResponse:
        return await self._stub.GetAccountCredentials(
            subscription_pb2.GetAccountCredentialsRequest(account_id=self.account_id),
            metadata=self._caller.metadata(),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    async def load(self) -> None:
        """At start-up: the database's token when the account was rotated there, unless the
        token file changed after that rotation (then the file's is pushed as the new one).
        Best effort: without the service the configuration's token is used."""
        try:
            current = await self._fetch()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # the service may start after the shard
                log.info(
                    "cannot read the account's current token; using the configured one",
                    extra={"account": self.account_id, "code": error.code().name},
                )
            return
        file = self._file
        if (
            file is not None
            and file.content != current.access_token
            and file.mtime_ns > current.rotated_at.ToNanoseconds()
        ):
            self._file = None  # changed after the database's rotation: the watcher pushes it
            return
        self._apply(current.access_token, current.credentials_version, "read at start-up")

    async def follow(self, version: int) -> None:
        """Called with the service's current version (from a health report's answer)."""
        if version <= self.version:
            return
        try:
            current = await self._fetch()
        except grpc.aio.AioRpcError as error:
            log.warning(
                "cannot read the account's rotated token; retrying with the next report",
                extra={"account": self.account_id, "credentials_version": version, "code": error.code().name},
            )
            return
        self._apply(current.access_token, current.credentials_version, "rotated")

    def _apply(self, token: str, version: int, how: str) -> None:
        if version < self.version or (version == self.version and token == self._token):
            return
        changed = token != self._token
        self._token, self.version = token, version
        VERSION.labels(self._shard).set(version)
        if not changed:
            return
        self.generation += 1
        log.info(
            "access token replaced; reconnecting with it",
            extra={"shard": int(self._shard), "account": self.account_id, "credentials_version": version, "how": how},
        )
        self._arrived.set()
        if not self.waiting:
            self.on_new_token()

    # -- waiting after a refusal ------------------------------------------------------------

    async def wait_for_new(self, used_generation: int) -> None:
        """Returns once a token other than the one of `used_generation` is here; no connection
        is attempted meanwhile (retrying a refused token only risks the account being blocked)."""
        self.waiting = True
        WAITING.labels(self._shard, self.account_id).set(1)
        try:
            while self.generation == used_generation:
                self._arrived.clear()
                await self._arrived.wait()
        finally:
            self.waiting = False
            WAITING.labels(self._shard, self.account_id).set(0)

    # -- the mounted token file -------------------------------------------------------------

    async def watch_file(self, poll_seconds: float) -> None:
        """Rotates the account when its token file changes (a Kubernetes Secret is updated in
        place, eventually); nothing to do for an account without a file."""
        if self.account.access_token_file is None:
            return
        while True:
            await asyncio.sleep(poll_seconds)
            state = await asyncio.to_thread(self._read_file)
            if state is not None and state != self._file:
                self._file = state
                if state.content and state.content != self._token:
                    self._unpublished = state.content
            if self._unpublished is not None:
                await self._publish(self._unpublished)

    async def _publish(self, token: str) -> None:
        try:
            response = await self._stub.RotateAccessToken(
                subscription_pb2.RotateAccessTokenRequest(account_id=self.account_id, access_token=token),
                metadata=self._caller.metadata(),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "the account's token file changed but the service did not take it; retrying",
                extra={"account": self.account_id, "code": error.code().name},
            )
            if self.waiting:  # refused already: the file's token cannot be worse than the one in use
                self._apply(token, self.version, "token file, service unreachable")
            return
        self._unpublished = None
        self._apply(token, response.credentials_version, "token file")

    def _read_file(self) -> _FileState | None:
        path: Path | None = self.account.access_token_file
        if path is None:
            return None
        try:
            return _FileState(path.stat().st_mtime_ns, path.read_text().strip())
        except OSError:
            return None  # a Secret being swapped in place: read it at the next poll
