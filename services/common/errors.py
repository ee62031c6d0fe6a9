"""Domain errors that carry a canonical gRPC status.

Service code raises these; the shared interceptor turns them into the status and message,
so handlers stay free of `context.abort` plumbing and any other exception becomes INTERNAL.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """Standard error details to send with the status (services/common/ratelimit.py), if any."""
        return ()


def error_with(code: grpc.StatusCode, message: str) -> ServiceError:
    """A ServiceError of any status, for callers that choose the code at run time."""
    error = ServiceError(message)
    error.code = code
    return error


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


def dependency_unavailable(dependency: str, detail: str = "") -> Unavailable:
    """A dependency lost for a while: UNAVAILABLE (AIP-193; never RESOURCE_EXHAUSTED, which
    clients read as a quota), naming it and saying to retry."""
    suffix = f" ({detail})" if detail else ""
    return Unavailable(f"{dependency} is unavailable{suffix}; retry in a few seconds")
