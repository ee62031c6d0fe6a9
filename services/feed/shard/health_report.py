"""Tells the subscription service how this shard's broker connection is (ReportShardHealth),
every report interval and promptly on a change, so placement avoids a down shard and the
service fails its instruments over when it stays down.

It watches the runtime from outside (polling its state at a short period) rather than
hooking into it. A report that fails (the subscription service is down) is retried; it never
ends the shard, whose ticks do not depend on it. Each answer carries the account's current
token version: a newer one is fetched and the shard reconnects with it (credentials.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from dataserver.feed.v1 import feed_pb2
from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc

from services.common.clients import ServiceCaller
from services.common.timestamps import timestamp_from_epoch
from services.feed.shard.runtime import ShardRuntime

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
# Until the service's first answer says otherwise.
DEFAULT_INTERVAL_SECONDS = 5.0
RETRY_SECONDS = 1.0
WARN_EVERY_SECONDS = 60.0
CALL_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Observation:
    connected: bool
    down_since: float | None = None  # epoch seconds
    reason: str = ""
    waiting_for_credentials: bool = False


def cause(runtime: ShardRuntime) -> str:
    """Why the connection is down, in the words of the audit log."""
    code, reason = runtime.last_disconnect_code, runtime.last_disconnect_reason
    text = f"broker disconnect {code}: {reason}" if code else reason or "connecting"
    if runtime.credentials.waiting:
        text += "; stopped until the account's access token is replaced"
    return text


class HealthReporter:
    def __init__(self, runtime: ShardRuntime, channel: grpc.aio.Channel, token: str | None) -> None:
        self._runtime = runtime
        self._stub = subscription_pb2_grpc.SubscriptionServiceStub(channel)
        self._caller = ServiceCaller("subscription", token)
        self.interval = DEFAULT_INTERVAL_SECONDS
        self._down_since: float | None = None
        self._last_warning = 0.0
        self.reports_sent = 0
        self.reports_failed = 0

    def observe(self) -> Observation | None:
        """The connection as the runtime has it; None while the first connection is still being
        made (a shard starting up is not down, so say nothing yet)."""
        runtime = self._runtime
        if runtime.state == feed_pb2.CONNECTION_STATE_CONNECTED:
            self._down_since = None
            return Observation(True)
        disconnected_at = runtime.status().last_disconnect_at
        if self._down_since is None:
            if not disconnected_at.seconds and runtime.state == feed_pb2.CONNECTION_STATE_CONNECTING:
                return None
            self._down_since = disconnected_at.ToNanoseconds() / 1e9 if disconnected_at.seconds else time.time()
        return Observation(False, self._down_since, cause(runtime), runtime.credentials.waiting)

    async def run(self) -> None:
        sent: Observation | None = None
        due = 0.0  # monotonic time of the next report even without a change
        while True:
            observation = self.observe()
            now = time.monotonic()
            if observation is not None and (observation != sent or now >= due):
                if await self._report(observation):
                    sent, due = observation, now + self.interval
                else:
                    sent, due = None, now + RETRY_SECONDS
            await asyncio.sleep(POLL_SECONDS)

    async def _report(self, observation: Observation) -> bool:
        runtime = self._runtime
        request = subscription_pb2.ReportShardHealthRequest(
            shard_id=runtime.shard_id,
            shard_epoch=runtime.epoch,
            connected=observation.connected,
            down_since=timestamp_from_epoch(observation.down_since),
            reason=observation.reason,
            account_id=runtime.account_id,
            credentials_version=runtime.credentials.version,
            waiting_for_credentials=observation.waiting_for_credentials,
        )
        try:
            response = await self._stub.ReportShardHealth(
                request, metadata=self._caller.metadata(), timeout=CALL_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            self.reports_failed += 1
            self._warn(error)
            return False
        self.reports_sent += 1
        if response.report_interval.ToTimedelta().total_seconds() > 0:
            self.interval = response.report_interval.ToTimedelta().total_seconds()
        await runtime.credentials.follow(response.credentials_version)
        return True

    def _warn(self, error: grpc.aio.AioRpcError) -> None:
        """One warning a minute at most: the subscription service being down is logged by others."""
        extra = {"shard": self._runtime.shard_id, "code": error.code().name, "details": error.details()}
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning("shard health report failed; retrying", extra=extra)
        else:
            log.debug("shard health report failed; retrying", extra=extra)
