"""Every server: health, reflection, INTERNAL for surprises, NOT_SERVING while draining."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from dataserver.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from grpc_health.v1 import health_pb2

from services.common.auth import Authenticator
from services.common.clients import health_stub
from services.common.config import Settings
from services.common.db import Pool, open_pool
from services.common.server import GrpcApp, build_app
from services.feed import shard_server
from services.scheduler import server as scheduler_server

SETTINGS = dataclasses.replace(Settings(), auth_mode="dev")


async def health_of(app: GrpcApp, service: str = "") -> int:
    async with grpc.aio.insecure_channel(app.address) as channel:
        reply = await health_stub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        return reply.status


async def test_the_scheduler_starts_not_serving_then_serves_health_and_answers(database_url: str) -> None:
    pool = await open_pool(database_url, max_size=2)
    try:
        app = scheduler_server.create_server(SETTINGS, pool).app
        await app.start()
        assert await health_of(app) == health_pb2.HealthCheckResponse.NOT_SERVING
        await app.set_serving(True)
        assert await health_of(app, app.service_names[0]) == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(app.address) as channel:
            reply = await scheduler_pb2_grpc.SchedulerServiceStub(channel).ListJobs(scheduler_pb2.ListJobsRequest())
            assert len(reply.jobs) == 5 and reply.leader_replica_id == ""  # its schedule loop is not started
        await app.stop(0)
    finally:
        await pool.close()


async def test_unexpected_errors_become_internal_with_the_request_id(database_url: str) -> None:
    class Exploding:
        async def Check(
            self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
        ) -> health_pb2.HealthCheckResponse:
            raise KeyError("secret internals")

    # A real server with the shared stack; Health under another name stands in for a service.
    pool: Pool = await open_pool(database_url, max_size=1)
    handlers: list[grpc.GenericRpcHandler] = []

    def register(server: grpc.aio.Server) -> None:
        service = health_pb2.DESCRIPTOR.services_by_name["Health"]
        method = service.methods_by_name["Check"]
        handler = grpc.unary_unary_rpc_method_handler(
            Exploding().Check,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )
        handlers.append(grpc.method_handlers_generic_handler("test.Exploding", {method.name: handler}))
        server.add_generic_rpc_handlers(tuple(handlers))

    app = build_app(["test.Exploding"], register, host="127.0.0.1", port=0, authenticator=Authenticator("dev", pool))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            call = channel.unary_unary(
                "/test.Exploding/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "req-42"),))
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert "req-42" in (raised.value.details() or "") and "secret" not in (raised.value.details() or "")
    finally:
        await app.stop(0)
        await pool.close()


async def test_draining_reports_not_serving_before_stopping() -> None:
    app = shard_server.create_server(SETTINGS).app
    await app.start()
    await app.set_serving(True)
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = health_stub(channel)
        updates = aiter(stub.Watch(health_pb2.HealthCheckRequest(service="")))
        assert (await anext(updates)).status == health_pb2.HealthCheckResponse.SERVING
        stopping = app.stop(grace=1)
        import asyncio

        stop_task = asyncio.ensure_future(stopping)
        assert (await anext(updates)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stop_task
