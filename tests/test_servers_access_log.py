"""The access log on a real server with the shared interceptor: routine calls at DEBUG, slow
and failed ones at INFO and above, a long stream never "slow"."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1.health_pb2 import HealthCheckRequest as Request
from grpc_health.v1.health_pb2 import HealthCheckResponse as Response

from services.common.errors import NotFound, Unavailable
from services.common.interceptors import ACCESS_LEVELS, AccessLog
from services.common.server import GrpcApp, build_app
from tests.feed_fixtures import eventually

SLOW_SECONDS = 0.5
UNARY = ("Fast", "Slow", "Missing", "Broken")
STREAMS = ("Stream", "StreamFails", "Endless")


def field(record: logging.LogRecord, name: str) -> Any:
    """A field the line carries (passed through `extra=`)."""
    return vars(record)[name]


class Probe:
    """A service whose methods end every way an RPC can."""

    async def Fast(self, request: Request, context: grpc.aio.ServicerContext) -> Response:
        return Response()

    async def Slow(self, request: Request, context: grpc.aio.ServicerContext) -> Response:
        await asyncio.sleep(SLOW_SECONDS)  # the outcome under test is "took at least the threshold"
        return Response()

    async def Missing(self, request: Request, context: grpc.aio.ServicerContext) -> Response:
        raise NotFound("no such thing")

    async def Broken(self, request: Request, context: grpc.aio.ServicerContext) -> Response:
        raise KeyError("a bug")

    async def Stream(self, request: Request, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        yield Response()
        await asyncio.sleep(SLOW_SECONDS)  # a stream longer than the slow threshold
        yield Response()

    async def StreamFails(self, request: Request, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        yield Response()
        raise Unavailable("the upstream went away")

    async def Endless(self, request: Request, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
        while True:
            yield Response()
            await asyncio.sleep(0.05)


def register(server: grpc.aio.Server) -> None:
    probe = Probe()
    load, dump = Request.FromString, Response.SerializeToString
    handlers = {
        **{n: grpc.unary_unary_rpc_method_handler(getattr(probe, n), load, dump) for n in UNARY},
        **{n: grpc.unary_stream_rpc_method_handler(getattr(probe, n), load, dump) for n in STREAMS},
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Probe", handlers),))


@pytest_asyncio.fixture(loop_scope="session")
async def app() -> AsyncIterator[GrpcApp]:
    app = build_app(
        ["test.Probe"], register, host="127.0.0.1", port=0, authenticator=None, slow_rpc_seconds=SLOW_SECONDS
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(0)


def access_lines(caplog: pytest.LogCaptureFixture, method: str) -> list[logging.LogRecord]:
    """The access lines of `method` (an unexpected error also has a line of its own, with its traceback)."""
    return [
        r
        for r in caplog.records
        if r.name == "dataserver.access" and getattr(r, "method", "") == method and r.getMessage().endswith("rpc")
    ]


async def call(app: GrpcApp, method: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(app.address) as channel:
        rpc: Callable[..., Any] = channel.unary_unary(
            f"/test.Probe/{method}",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )
        try:
            await rpc(Request())
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def stream(app: GrpcApp, method: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(app.address) as channel:
        rpc = channel.unary_stream(
            f"/test.Probe/{method}",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )
        try:
            async for _ in rpc(Request()):
                pass
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def test_unary_calls_are_logged_by_outcome_and_duration(app: GrpcApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dataserver.access")
    assert await call(app, "Fast") == grpc.StatusCode.OK
    assert await call(app, "Slow") == grpc.StatusCode.OK
    assert await call(app, "Missing") == grpc.StatusCode.NOT_FOUND
    assert await call(app, "Broken") == grpc.StatusCode.INTERNAL
    expected = {
        "Fast": (logging.DEBUG, "rpc", "OK"),
        "Slow": (logging.INFO, "slow rpc", "OK"),
        "Missing": (logging.WARNING, "rpc", "NOT_FOUND"),
        "Broken": (logging.ERROR, "rpc", "INTERNAL"),
    }
    for method, (level, message, code) in expected.items():
        [line] = await eventually(partial(access_lines, caplog, f"/test.Probe/{method}"), what=f"{method}'s line")
        assert (line.levelno, line.getMessage(), field(line, "code")) == (level, message, code), method
    slow = access_lines(caplog, "/test.Probe/Slow")[0]
    assert field(slow, "duration_ms") >= SLOW_SECONDS * 1000


async def test_a_long_stream_is_not_slow_and_a_failed_one_is_logged(
    app: GrpcApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dataserver.access")
    assert await stream(app, "Stream") == grpc.StatusCode.OK
    assert await stream(app, "StreamFails") == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(app.address) as channel:
        endless = channel.unary_stream(
            "/test.Probe/Endless",
            request_serializer=Request.SerializeToString,
            response_deserializer=Response.FromString,
        )(Request())
        await endless.read()
        endless.cancel()  # the terminal hangs up
    expected = {
        "Stream": (logging.DEBUG, "OK"),
        "StreamFails": (logging.WARNING, "UNAVAILABLE"),
        "Endless": (logging.INFO, "CANCELLED"),
    }
    for method, (level, code) in expected.items():
        [line] = await eventually(partial(access_lines, caplog, f"/test.Probe/{method}"), what=f"{method}'s line")
        assert (line.levelno, field(line, "code")) == (level, code), method
    assert field(access_lines(caplog, "/test.Probe/Stream")[0], "duration_ms") >= SLOW_SECONDS * 1000


async def test_only_failed_and_slow_calls_reach_an_info_log(app: GrpcApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dataserver.access")
    for _ in range(5):
        assert await call(app, "Fast") == grpc.StatusCode.OK
    assert await call(app, "Missing") == grpc.StatusCode.NOT_FOUND
    await eventually(lambda: access_lines(caplog, "/test.Probe/Missing"), what="the failed call's line")
    assert access_lines(caplog, "/test.Probe/Fast") == []


def test_every_status_code_has_a_level_and_only_ok_is_below_info() -> None:
    assert set(ACCESS_LEVELS) == set(grpc.StatusCode)
    assert [c for c, level in ACCESS_LEVELS.items() if level < logging.INFO] == [grpc.StatusCode.OK]
    policy = AccessLog(slow_seconds=0.25)
    assert policy.level(grpc.StatusCode.OK, 0.1, streaming=False) == logging.DEBUG
    assert policy.level(grpc.StatusCode.OK, 0.25, streaming=False) == logging.INFO
    assert policy.level(grpc.StatusCode.OK, 3600.0, streaming=True) == logging.DEBUG
    assert policy.level(grpc.StatusCode.CANCELLED, 3600.0, streaming=True) == logging.INFO
