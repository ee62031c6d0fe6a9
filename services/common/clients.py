"""Channels to the other services, with this service's credentials attached.

Errors from a dependency are mapped to our own canonical errors, so a caller's status says
what was wrong (a NOT_FOUND from the registry stays NOT_FOUND) rather than UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.jsonlog import request_id_var
from services.common.tls import channel_credentials

T = TypeVar("T")

_PASSED_THROUGH: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def open_channel(address: str, options: tuple[tuple[str, int], ...] = ()) -> grpc.aio.Channel:
    """A channel to another service: TLS when the process trusts a CA (services/common/tls.py)."""
    settings = [("grpc.max_receive_message_length", 32 * 1024 * 1024), *options]
    credentials = channel_credentials()
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=settings)
    return grpc.aio.insecure_channel(address, options=settings)


class ServiceCaller:
    """Calls another service with this service's token and the current request id."""

    def __init__(self, name: str, token: str | None, timeout: float = 10.0) -> None:
        self._name = name
        self._token = token
        self._timeout = timeout

    def metadata(self) -> tuple[tuple[str, str], ...]:
        entries: list[tuple[str, str]] = []
        if self._token:
            entries.append(("authorization", f"Bearer {self._token}"))
        request_id = request_id_var.get()
        if request_id:
            entries.append(("x-request-id", request_id))
        return tuple(entries)

    async def call(self, method: Callable[..., Awaitable[T]], request: object) -> T:
        try:
            return await method(request, metadata=self.metadata(), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            mapped = _PASSED_THROUGH.get(error.code())
            if mapped is not None:
                raise mapped(error.details() or f"{self._name} refused the request") from error
            raise Unavailable(f"{self._name} is unavailable ({error.code().name}): {error.details()}") from error


class HealthChecks(Protocol):
    """The standard health service's client side, as a channel's stub calls it."""

    def Check(
        self, request: health_pb2.HealthCheckRequest, *, timeout: float | None = None
    ) -> grpc.aio.UnaryUnaryCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]: ...

    def Watch(
        self, request: health_pb2.HealthCheckRequest, *, timeout: float | None = None
    ) -> grpc.aio.UnaryStreamCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]: ...


def health_stub(channel: grpc.aio.Channel) -> HealthChecks:
    """A typed health stub (types-grpcio-health-checking's HealthStub declares no methods)."""
    return cast(HealthChecks, health_pb2_grpc.HealthStub(channel))
