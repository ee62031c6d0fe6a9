"""A process on the shared server object (the path every service's `serve()` takes) whose one
background task fails once a trigger file appears: `python -m tests.crashing_service TRIGGER`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvloop

from services.common.config import load_settings
from services.common.jsonlog import configure_logging
from services.common.server import build_app, serve_app

TASK_NAME = "test-fails-on-trigger"


async def _fail_when(trigger: Path) -> None:
    while not trigger.exists():
        await asyncio.sleep(0.02)
    raise RuntimeError("the background task broke")


async def main(trigger: Path) -> int:
    settings = load_settings()
    configure_logging("crashing-service", "INFO")
    app = build_app(["test.Crashing"], lambda server: None, host="127.0.0.1", port=0, authenticator=None, grace=5.0)

    async def start_background() -> None:
        app.spawn(_fail_when(trigger), TASK_NAME)

    app.before_serving.append(start_background)
    return await serve_app(settings, app)


if __name__ == "__main__":
    sys.exit(uvloop.run(main(Path(sys.argv[1]))))
