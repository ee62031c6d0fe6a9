"""The one interceptor stack of every server: request id, authentication, access log,
latency metrics, and mapping of errors to canonical status codes.

The access log writes one line per RPC at the level its outcome deserves (`ACCESS_LEVELS`):
a successful call faster than the slow threshold is routine (DEBUG, off by default), a slow
one or a failed one is worth reading (INFO and above). A stream's duration is its life, so a
long stream is not slow: its end is logged above DEBUG only when it fails.

Domain code raises `ServiceError`s; a database that cannot be reached is UNAVAILABLE (the
caller retries; see services/common/db.py); anything unexpected is logged with its traceback
and returned as INTERNAL with the request id, never as a raw exception text.

A streaming RPC is handed to gRPC as a coroutine that writes each response
(`context.write`), not as an async generator: gRPC iterates a generator with `async for`
and abandons it, suspended at a `yield`, when the RPC is cancelled during a write (the
client hung up, the server stopped); the generator is then closed later by the event loop's
finaliser, in another task and context, where the scope's request-id token cannot be reset.
As a coroutine, the RPC's own task closes the servicer's generator, in the RPC's context.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import grpc
from grpc.aio import AbortError, ServicerContext

from services.common.access import RATE_LIMITED_RPCS, check_access
from services.common.auth import Authenticator, principal_var
from services.common.db import database_down
from services.common.errors import ServiceError, dependency_unavailable
from services.common.jsonlog import request_id_var
from services.common.metrics import RPC_HANDLED, RPC_SECONDS
from services.common.ratelimit import RateLimiter

log = logging.getLogger("dataserver.access")

_Code = grpc.StatusCode
# The level of an RPC's access line by its status: the one table of what an outcome is worth.
ACCESS_LEVELS: dict[grpc.StatusCode, int] = {
    _Code.OK: logging.DEBUG,  # INFO when a unary call is slow (AccessLog.level)
    # The caller hung up or gave up: routine for streams, worth a line without alarm.
    _Code.CANCELLED: logging.INFO,
    # The caller's request or state: someone should look, nothing here is broken.
    _Code.INVALID_ARGUMENT: logging.WARNING,
    _Code.NOT_FOUND: logging.WARNING,
    _Code.ALREADY_EXISTS: logging.WARNING,
    _Code.PERMISSION_DENIED: logging.WARNING,
    _Code.UNAUTHENTICATED: logging.WARNING,
    _Code.FAILED_PRECONDITION: logging.WARNING,
    _Code.OUT_OF_RANGE: logging.WARNING,
    _Code.RESOURCE_EXHAUSTED: logging.WARNING,
    _Code.ABORTED: logging.WARNING,  # a concurrent change won; the caller retries
    _Code.UNIMPLEMENTED: logging.WARNING,  # a client newer than this server
    # Transient: a dependency is down or the time ran out; the caller retries.
    _Code.UNAVAILABLE: logging.WARNING,
    _Code.DEADLINE_EXCEEDED: logging.WARNING,
    # Our bug or lost data: someone must act.
    _Code.INTERNAL: logging.ERROR,
    _Code.UNKNOWN: logging.ERROR,
    _Code.DATA_LOSS: logging.ERROR,
}


class AccessLog:
    """One line per finished RPC, at the level of `ACCESS_LEVELS`; a unary call that succeeded
    in `slow_seconds` or more is logged at INFO."""

    def __init__(self, slow_seconds: float) -> None:
        self.slow_seconds = slow_seconds

    def level(self, code: grpc.StatusCode, seconds: float, streaming: bool) -> int:
        if code is _Code.OK and not streaming and seconds >= self.slow_seconds:
            return logging.INFO
        return ACCESS_LEVELS.get(code, logging.WARNING)

    def write(self, method: str, code: grpc.StatusCode, seconds: float, streaming: bool, peer: str) -> None:
        level = self.level(code, seconds, streaming)
        if not log.isEnabledFor(level):
            return
        slow = level == logging.INFO and code is _Code.OK
        log.log(
            level,
            "slow rpc" if slow else "rpc",
            extra={"method": method, "code": code.name, "duration_ms": round(seconds * 1000, 3), "peer": peer},
        )


# Health checks and reflection must answer without credentials.
_OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class _Outcome:
    __slots__ = ("code",)

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, authenticator: Authenticator | None, access_log: AccessLog, rate_limiter: RateLimiter | None = None
    ) -> None:
        self._authenticator = authenticator
        self._access_log = access_log
        self._rate_limiter = rate_limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        metadata = {key: value for key, value in (handler_call_details.invocation_metadata or ())}
        service, _, name = method.lstrip("/").rpartition("/")
        streaming = handler.unary_unary is None  # a stream's duration is its life, never "slow"
        scope = _RpcScope(self._authenticator, self._access_log, method, service, name, metadata, streaming)
        scope.rate_limiter = self._rate_limiter
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                scope.wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                scope.wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                scope.wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                scope.wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer
            )
        return handler


class _RpcScope:
    def __init__(
        self,
        authenticator: Authenticator | None,
        access_log: AccessLog,
        method: str,
        service: str,
        name: str,
        metadata: dict[str, Any],
        streaming: bool,
    ) -> None:
        self._authenticator = authenticator
        self._access_log = access_log
        self._streaming = streaming
        self._method = method
        self._service = service
        self._name = name
        self._metadata = metadata
        self.rate_limiter: RateLimiter | None = None

    # The behaviours are the servicer's coroutine (unary) and async-generator (streaming)
    # methods; grpc's stubs type handlers as synchronous, hence Callable[..., Any].
    def wrap_unary(self, behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: ServicerContext) -> Any:
            async with self._scope(context):
                return await behavior(request, context)

        return unary

    def wrap_stream(self, behavior: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
        async def stream(request: Any, context: ServicerContext) -> None:
            async with self._scope(context) as outcome, aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    try:
                        await context.write(response)
                    except grpc.aio.InternalError:
                        # The call can take no more messages (the client went away during the
                        # write): it ends quietly, as in gRPC's own loop over a generator.
                        outcome.code = grpc.StatusCode.CANCELLED
                        return

        return stream

    @asynccontextmanager
    async def _scope(self, context: ServicerContext) -> AsyncIterator[_Outcome]:
        request_id = str(self._metadata.get("x-request-id") or uuid.uuid4().hex)
        request_token = request_id_var.set(request_id)
        outcome = _Outcome()
        started = time.perf_counter()
        # Read now: touching the context after a stream was torn down (server shutdown) can crash grpc.
        peer = context.peer()
        context.set_trailing_metadata((("x-request-id", request_id),))
        try:
            if self._authenticator is not None:
                principal = await self._authenticator.authenticate(self._metadata)
                check_access(self._method, principal)
                principal_var.set(principal)
                if self.rate_limiter and self._method in RATE_LIMITED_RPCS and not principal.privileged:
                    self.rate_limiter.take(principal.user_id, self._name)
            yield outcome
        except ServiceError as error:
            outcome.code = error.code
            details = error.trailing_metadata()
            if details:  # replaces the trailing metadata set above, so it carries the request id again
                await context.abort(error.code, error.message, (("x-request-id", request_id), *details))
            await context.abort(error.code, error.message)
        except AbortError:
            outcome.code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except NotImplementedError:
            # The generated base servicer's answer for an RPC a service does not implement yet.
            outcome.code = grpc.StatusCode.UNIMPLEMENTED
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{self._method} is not implemented yet")
        except (asyncio.CancelledError, GeneratorExit):
            outcome.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:
            if not database_down(error):
                outcome.code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error", extra={"method": self._method})
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error; request id {request_id}")
            unavailable = dependency_unavailable("the database (Postgres)", type(error).__name__)
            outcome.code = unavailable.code
            await context.abort(unavailable.code, unavailable.message)
        finally:
            elapsed = time.perf_counter() - started
            RPC_SECONDS.labels(self._service, self._name).observe(elapsed)
            RPC_HANDLED.labels(self._service, self._name, outcome.code.name).inc()
            self._access_log.write(self._method, outcome.code, elapsed, self._streaming, peer)
            request_id_var.reset(request_token)
