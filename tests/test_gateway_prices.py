"""Honest prices: Dhan's float32 prices reach terminals as the decimals Dhan meant (2, or 4
for the currency segments), on the fast path, the general path and a real gateway."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.instruments import SEGMENT_WIRE_CODES
from services.common.keys import instrument_key
from services.dhan import (
    DepthLevel,
    FullPacket,
    decode_packet,
    encode_full,
    encode_prev_close,
    encode_quote,
    encode_ticker,
)
from services.dhan.decode import ProtocolErrors
from services.feed.gateway.hub import Instrument
from services.feed.gateway.prices import CURRENCY_UNITS, PAISE, SCALES, rounded
from services.feed.gateway.values import Value
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.test_subscription_capacity import add

FLOAT32_PAISA_LIMIT = 2**17  # below it float32's step is under half a paisa
FLOAT32_FOUR_DECIMALS_LIMIT = 2**10
NSE_FNO, NSE_CURRENCY, BSE_CURRENCY = (SEGMENT_WIRE_CODES[s] for s in ("NSE_FNO", "NSE_CURRENCY", "BSE_CURRENCY"))


def f32(value: float) -> float:
    """What a float32 field carries for `value`, widened as struct gives it."""
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def decimals(value: float) -> int:
    """How many decimals repr shows (0 for a whole number)."""
    exponent = Decimal(repr(value)).normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def test_the_rule_is_by_segment() -> None:
    assert SCALES[NSE_CURRENCY] == SCALES[BSE_CURRENCY] == CURRENCY_UNITS
    assert {SCALES[code] for code in SEGMENT_WIRE_CODES.values()} - {CURRENCY_UNITS} == {PAISE}
    assert len(SCALES) == 256 and SCALES[255] == PAISE  # an unknown segment byte: paise


def test_the_noisy_examples() -> None:
    assert f32(25898.05) == 25898.05078125 and rounded(f32(25898.05), PAISE) == 25898.05
    assert f32(242.7) == 242.6999969482422 and repr(rounded(f32(242.7), PAISE)) == "242.7"
    assert repr(rounded(f32(83.2525), CURRENCY_UNITS)) == "83.2525"
    assert repr(rounded(f32(0.15), PAISE)) == "0.15"  # where n * 0.05 in binary gives 0.15000000000000002


@settings(max_examples=2000, deadline=None)
@given(st.integers(-(FLOAT32_PAISA_LIMIT * 100 - 1), FLOAT32_PAISA_LIMIT * 100 - 1))
def test_every_paisa_price_comes_back_exactly(paise: int) -> None:
    price = paise / 100  # the double nearest the decimal
    result = rounded(f32(price), PAISE)
    assert result == round(price, 2) == price
    assert Decimal(repr(result)) == Decimal(paise).scaleb(-2) and decimals(result) <= 2


@settings(max_examples=2000, deadline=None)
@given(st.integers(-(FLOAT32_FOUR_DECIMALS_LIMIT * 10_000 - 1), FLOAT32_FOUR_DECIMALS_LIMIT * 10_000 - 1))
def test_every_currency_price_comes_back_exactly(units: int) -> None:
    price = units / 10_000
    result = rounded(f32(price), CURRENCY_UNITS)
    assert result == round(price, 4) == price
    assert Decimal(repr(result)) == Decimal(units).scaleb(-4) and decimals(result) <= 4


@settings(max_examples=2000, deadline=None)
@given(st.floats(-1e9, 1e9, width=32))
def test_any_float32_rounds_as_decimal_rounding_does(value: float) -> None:
    """Python's round(x, n) rounds the exact decimal value (ties to even); so does ours, since
    a float32 times 100 or 10,000 is exact in a double."""
    assert rounded(value, PAISE) == round(value, 2) and decimals(rounded(value, PAISE)) <= 2
    assert rounded(value, CURRENCY_UNITS) == round(value, 4) and decimals(rounded(value, CURRENCY_UNITS)) <= 4


@settings(max_examples=1000, deadline=None)
@given(st.integers(FLOAT32_PAISA_LIMIT * 100, 100_000_000))
def test_above_float32s_paisa_the_nearest_paisa_to_what_was_sent(paise: int) -> None:
    """Up to 1e6: float32 no longer carries every paisa, so the price is the paisa nearest the
    float32 value, within half its step of the decimal; prices on a grid float32 carries there
    (whole rupees, quarters) come back exactly."""
    price = paise / 100
    sent = f32(price)
    step = math.ulp(sent) * 2**29  # a float32's step: 29 fewer mantissa bits than a double's
    result = rounded(sent, PAISE)
    assert decimals(result) <= 2 and abs(result - price) <= step / 2 + 0.005
    quarter = (paise // 25) * 0.25
    assert rounded(f32(quarter), PAISE) == quarter


def test_garbage_passes_through_without_raising() -> None:
    assert math.isnan(rounded(math.nan, PAISE))
    assert rounded(math.inf, PAISE) == math.inf and rounded(-math.inf, CURRENCY_UNITS) == -math.inf


def _prices(tick: feed_pb2.Tick) -> list[float]:
    scalars = [tick.last_price, tick.average_price, tick.day_open, tick.day_high, tick.day_low, tick.day_close]
    return [*scalars, tick.previous_close, *(p for d in tick.depth for p in (d.bid_price, d.ask_price))]


def _parsed(entry: bytes) -> feed_pb2.Tick:
    (tick,) = feed_pb2.TickBatch.FromString(entry).ticks
    return tick


@pytest.mark.parametrize(
    ("segment", "price", "places"), [(NSE_FNO, 242.7, 2), (NSE_CURRENCY, 83.2525, 4), (BSE_CURRENCY, 1.0825, 4)]
)
def test_every_price_field_on_every_path(segment: int, price: float, places: int) -> None:
    """Fast path, general path (as GetSnapshot builds it), Quote and Ticker packets."""
    near = [round(price + k * 10.0**-places, places) for k in range(-5, 12)]  # 2- or 4-decimal prices
    assert all(f32(p) != p for p in near[:4])  # the float32 alone would have been noisy
    atp, day_open, day_close, day_high, day_low, previous = near[10:16]
    depth = [DepthLevel(10, 20, 1, 2, near[4 - k], near[6 + k]) for k in range(5)]
    full = encode_full(
        segment, 7, near[5], 1, 1_790_000_000, atp, 5, 6, 7, 8, 9, 10, day_open, day_close, day_high, day_low, depth
    )
    prev = encode_prev_close(segment, 7, previous, 4)
    instrument = Instrument(instrument_key(segment, 7))
    value = Value(instrument, 1, 0, full, None, prev)
    fast = _parsed(value.entry(common_pb2.FEED_MODE_FULL))
    assert fast == value.message(common_pb2.FEED_MODE_FULL)
    sides = [p for d in depth for p in (d.bid_price, d.ask_price)]
    assert _prices(fast) == [near[5], atp, day_open, day_high, day_low, day_close, previous, *sides]
    assert all(decimals(p) <= places for p in _prices(fast))
    quote = encode_quote(segment, 7, near[5], 1, 1, atp, 5, 6, 7, day_open, day_close, day_high, day_low)
    got = _parsed(Value(instrument, 2, 0, quote, None, None).entry(common_pb2.FEED_MODE_QUOTE))
    assert (got.last_price, got.average_price, got.day_close, got.day_low) == (near[5], atp, day_close, day_low)
    ticker = Value(instrument, 3, 0, encode_ticker(segment, 7, near[0], 1), None, prev)
    got = _parsed(ticker.entry(common_pb2.FEED_MODE_TICKER))
    assert (got.last_price, got.previous_close) == (near[0], previous)


# --- through a real gateway, from the simulator ---------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def feed(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir) as running:
        yield running


async def test_terminals_get_decimal_prices_from_the_simulator(feed: FeedUnderTest) -> None:
    """Streamed (snapshot and batches) and GetSnapshot ticks of the simulator's instruments
    carry 2-decimal prices, each the float32 sent rounded to the paisa."""
    await add(feed.subscription, "alice", "RELIANCE", strikes_each_side=2)
    instruments = feed.gateway.hub.instruments
    await eventually(
        lambda: len([i for i in instruments.values() if i.latest is not None and i.mode]) >= 11,
        what="values at the gateway",
    )
    keys = [i.key_proto for i in instruments.values() if i.latest is not None]
    async with grpc.aio.insecure_channel(feed.gateway.app.address) as channel:
        stub = feed_pb2_grpc.GatewayServiceStub(channel)
        stream = stub.StreamTicks(
            feed_pb2.StreamTicksRequest(instruments=feed_pb2.InstrumentList(keys=keys)),
            metadata=feed.subscription.admin,
        )
        ticks = list((await stream.read()).snapshot.ticks)
        while len(ticks) < 60:
            ticks.extend((await asyncio.wait_for(stream.read(), 10)).batch.ticks)
        stream.cancel()

        async def snapshot_matching_the_raw_packets() -> list[tuple[float, float]]:
            reply = await stub.GetSnapshot(
                feed_pb2.GetSnapshotRequest(keys=keys),
                metadata=feed.subscription.admin,
            )
            ticks.extend(reply.ticks)
            raw = {}  # the packets behind the values now at the gateway, by (key, sequence)
            for instrument in instruments.values():
                if (latest := instrument.latest) is not None and latest.tick is not None:
                    packet = decode_packet(latest.tick, ProtocolErrors())
                    assert isinstance(packet, FullPacket)
                    raw[(instrument.key_proto.SerializeToString(), latest.sequence)] = packet.ltp
            return [
                (t.last_price, raw[found])
                for t in reply.ticks
                if (found := (t.key.SerializeToString(), t.sequence)) in raw
            ]

        matched = await eventually(snapshot_matching_the_raw_packets, what="a snapshot value still the latest")
    assert all(t.present_parts & feed_pb2.TICK_PART_FULL for t in ticks)
    prices = [p for t in ticks for p in _prices(t) if p]
    assert all(decimals(p) <= 2 for p in prices), [p for p in prices if decimals(p) > 2][:5]
    assert all(price == round(sent, 2) for price, sent in matched)
    assert any(f32(p) != p for p in prices)  # what the simulator sent was noisy once widened
