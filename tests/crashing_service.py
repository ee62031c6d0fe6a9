"""A process on the shared server object (the path every service's `serve()` takes) whose one
background task fails on SIGUSR1: `python -m tests.crashing_service`."""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from services.common.config import load_settings
from services.common.jsonlog import configure_logging
from services.common.server import build_app, serve_app

TASK_NAME = "test-fails-on-sigusr1"


async def _fail_when(told: asyncio.Event) -> None:
    await told.wait()
    raise RuntimeError("the background task broke")


async def main() -> int:
    settings = load_settings()
    configure_logging("crashing-service", "INFO")
    app = build_app(["test.Crashing"], lambda server: None, host="127.0.0.1", port=0, authenticator=None, grace=5.0)

    async def start_background() -> None:
        told = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, told.set)
        app.spawn(_fail_when(told), TASK_NAME)

    app.before_serving.append(start_background)
    return await serve_app(settings, app)


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
