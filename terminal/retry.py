"""Reopening a broken stream: what broke it, said for people, and a capped doubling back-off."""

from __future__ import annotations

import asyncio

import grpc

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0


def why(error: Exception) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__


class Backoff:
    """The wait before the next attempt: doubles after each failure up to the cap; `reset`
    once the stream delivers again."""

    def __init__(self) -> None:
        self.delay = RETRY_FIRST_SECONDS

    def reset(self) -> None:
        self.delay = RETRY_FIRST_SECONDS

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, RETRY_MAX_SECONDS)
