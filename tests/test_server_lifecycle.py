"""The shared server's lifecycle: serving as a context manager, and background work that
fails turning health NOT_SERVING and ending the process with a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from services.common.clients import health_stub
from services.common.server import build_app
from tests.crashing_service import TASK_NAME
from tests.feed_fixtures import eventually, start_logged_service


async def _health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_stub(channel).Check(health_pb2.HealthCheckRequest())
        return reply.status


async def test_serving_runs_the_start_up_work_then_drains_and_ends_the_tasks() -> None:
    app = build_app(["test.Empty"], lambda server: None, host="127.0.0.1", port=0, authenticator=None)
    steps: list[str] = []
    ended = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    async def start_up() -> None:
        assert await _health(app.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        app.spawn(forever(), "test-forever")
        steps.append("started")

    async def clean_up() -> None:
        steps.append("cleaned up")

    app.before_serving.append(start_up)
    app.on_stop.append(clean_up)
    async with app:
        assert steps == ["started"]
        assert await _health(app.address) == health_pb2.HealthCheckResponse.SERVING
    assert ended.is_set() and steps == ["started", "cleaned up"]


async def test_a_failed_background_task_turns_health_not_serving_and_exits_non_zero(tmp_path: Path) -> None:
    log_path = tmp_path / "service.log"
    process, port = await start_logged_service("tests.crashing_service", dict(os.environ), log_path)
    try:
        address = f"127.0.0.1:{port}"

        async def serving() -> bool:
            return await _health(address) == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, what="health SERVING")
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_stub(channel).Watch(health_pb2.HealthCheckRequest())
            updates = aiter(watch)
            assert (await anext(updates)).status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGUSR1)  # its background task fails
            assert (await asyncio.wait_for(anext(updates), 10)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
        assert await asyncio.to_thread(process.wait, 30) == 1
        records = [json.loads(line) for line in log_path.read_text().splitlines()]
        failed = [r for r in records if r.get("task") == TASK_NAME]
        assert failed and failed[0]["level"] == "ERROR" and "the background task broke" in json.dumps(failed[0])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
