"""Per-user rate limits: a token bucket per user, checked by the interceptor on the RPCs that
change subscriptions (services/common/access.py RATE_LIMITED_RPCS); admins and services are
exempt. Over the limit, the call fails RESOURCE_EXHAUSTED with a google.rpc.RetryInfo in the
standard error details (`grpc-status-details-bin`), saying when a token will be back.

The buckets are per process: with several replicas a user's limit is per replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.duration_pb2 import Duration

# googleapis-common-protos (from grpcio-status) ships no type stubs.
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]

from services.common.errors import ResourceExhausted

# Full buckets are forgotten past this many users, so the map stays bounded.
_MAX_TRACKED = 10_000


class RateLimited(ResourceExhausted):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def status_details(self) -> bytes:
        """A google.rpc.Status with RetryInfo, as `grpc-status-details-bin` carries it."""
        delay = Duration()
        delay.FromNanoseconds(math.ceil(self.retry_after * 1e9))
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=self.message)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status.SerializeToString()

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return (("grpc-status-details-bin", self.status_details()),)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` tokens a second, at most `burst` held; a call takes one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate {rate} must be positive and burst {burst} at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, user: str, what: str) -> None:
        """Takes a token of `user`'s bucket; RateLimited (with the wait) when it is empty."""
        now = self._clock()
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= _MAX_TRACKED:
                self._forget_full(now)
            bucket = self._buckets[user] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait = (1.0 - bucket.tokens) / self.rate
        raise RateLimited(
            f"rate limit: user {user!r} may call {what} {self.rate:g} times a second (bursts of {self.burst}); "
            f"retry in {wait:.2f} s",
            wait,
        )

    def _forget_full(self, now: float) -> None:
        for user, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst:
                del self._buckets[user]


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay in an error's standard details (a client's side), or None."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.ToNanoseconds() / 1e9
    return None
