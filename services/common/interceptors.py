"""The one interceptor stack of every server: request id, authentication, access log,
latency metrics, and mapping of errors to canonical status codes.

Domain code raises `ServiceError`s; anything unexpected is logged with its traceback and
returned as INTERNAL with the request id, never as a raw exception text.

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

from services.common.auth import Authenticator, principal_var
from services.common.errors import ServiceError
from services.common.jsonlog import request_id_var
from services.common.metrics import RPC_HANDLED, RPC_SECONDS

log = logging.getLogger("dataserver.access")

# Health checks and reflection must answer without credentials.
_OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


class _Outcome:
    __slots__ = ("code",)

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator | None) -> None:
        self._authenticator = authenticator

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
        scope = _RpcScope(self._authenticator, method, service, name, metadata)
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
        method: str,
        service: str,
        name: str,
        metadata: dict[str, Any],
    ) -> None:
        self._authenticator = authenticator
        self._method = method
        self._service = service
        self._name = name
        self._metadata = metadata

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
                principal_var.set(await self._authenticator.authenticate(self._metadata))
            yield outcome
        except ServiceError as error:
            outcome.code = error.code
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
        except Exception:
            outcome.code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error", extra={"method": self._method})
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error; request id {request_id}")
        finally:
            elapsed = time.perf_counter() - started
            RPC_SECONDS.labels(self._service, self._name).observe(elapsed)
            RPC_HANDLED.labels(self._service, self._name, outcome.code.name).inc()
            log.info(
                "rpc",
                extra={
                    "method": self._method,
                    "code": outcome.code.name,
                    "duration_ms": round(elapsed * 1000, 3),
                    "peer": peer,
                },
            )
            request_id_var.reset(request_token)
