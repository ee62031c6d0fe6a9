"""The feed shard's watchdog asks the injected market clock whether a session is open."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import grpc

from services.common.clock import ManualClock, SimulatedSessionClock
from services.common.config import Settings
from services.common.market_calendar import IST
from services.feed.shard.runtime import ShardRuntime


async def test_market_hours_follow_the_injected_clock() -> None:
    settings = dataclasses.replace(Settings(), feed_market_hours_only=True)
    async with grpc.aio.insecure_channel("127.0.0.1:9") as channel:  # never called here
        saturday_night = ManualClock(datetime(2026, 12, 12, 22, 0, tzinfo=IST))
        assert not ShardRuntime(settings, channel, saturday_night).in_market_hours()
        assert ShardRuntime(settings, channel, SimulatedSessionClock(saturday_night)).in_market_hours()
        mcx_evening = ManualClock(datetime(2026, 12, 7, 22, 0, tzinfo=IST))  # NSE closed, MCX open
        assert ShardRuntime(settings, channel, mcx_evening).in_market_hours()
        assert isinstance(ShardRuntime(settings, channel).market_clock, SimulatedSessionClock)  # MARKET_CLOCK default
