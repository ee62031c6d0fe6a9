"""Differential test: our decoder against the official client's own decoding functions
(dhanhq 2.3.0, ``dhanhq/marketfeed.py``) on the same random packets.

The official decoders are methods of ``MarketFeed`` taking the raw frame and returning a
dict. ``MarketFeed.__init__`` needs a DhanContext and creates an event loop, so the object
is made with ``object.__new__`` (no network, no loop); the decoders use ``self`` only for
``utc_time`` and ``on_close``.

Field mapping, official key -> ours (and how our value is converted to compare exactly):

- ``type`` ('Ticker Data', 'Quote Data', 'OI Data', 'Previous Close', 'Full Data') -> the
  record class.
- ``exchange_segment`` -> ``segment``; ``security_id`` -> ``security_id`` (same ints).
- Prices ``LTP``, ``avg_price``, ``open``, ``close``, ``high``, ``low``, ``prev_close``,
  depth ``bid_price``/``ask_price`` -> ``ltp``, ``atp``, ``day_open``, ``day_close``,
  ``day_high``, ``day_low``, ``prev_close``, ``bid_price``/``ask_price``: the official client
  returns ``"{:.2f}".format(float32 value)``; ours is the exact float32 value as a float, so
  we compare ``"{:.2f}".format(ours)``.
- ``LTT`` -> ``ltt_epoch``: the official ``utc_time`` formats Dhan's IST-based value *as if
  it were a UTC epoch*, as ``%H:%M:%S``, which yields the IST wall-clock time of day (and
  drops the date). Our records hold the raw value as ``ltt_ist`` and their ``ltt_epoch``
  property is the real UTC epoch, so we compare
  ``datetime.fromtimestamp(ltt_epoch, IST).strftime('%H:%M:%S')``.
- ``LTQ`` -> ``ltq``; ``volume`` -> ``volume``; ``total_sell_quantity`` / ``total_buy_quantity``
  -> ``total_sell_qty`` / ``total_buy_qty``; ``OI`` -> ``oi``; ``oi_day_high`` / ``oi_day_low``
  -> ``day_high_oi`` / ``day_low_oi``; ``prev_OI`` -> ``prev_oi``; depth ``bid_quantity`` /
  ``ask_quantity`` / ``bid_orders`` / ``ask_orders`` -> ``bid_qty`` / ``ask_qty`` /
  ``bid_orders`` / ``ask_orders`` (same ints: both read the integers unsigned).
- Disconnect: ``server_disconnection`` returns None (the reason is never exposed to the
  caller); it prints a message for 805-809. We record the tuple it unpacks and the message it
  prints and compare them with our ``reason``.

Discrepancies in the official client (we do not copy them):

- Disconnect messages: it prints "Invalid Client ID" for 808 and "Authentication Failed"
  for 809; per Dhan's annexure 808 is authentication failed, 809 access token invalid and
  810 client id invalid. It has no message for 800, 804, 810-814 and returns None, so an
  ``on_close`` callback cannot tell a fatal reason (807-810) from a retryable one.
- LTT loses the date and is produced by a function named ``utc_time`` although it is IST
  time of day; we expose the real UTC epoch (the date survives).
- Prices are rounded to 2 decimals as strings, which loses the 4th decimal of currency
  quotes (tick 0.0025); we keep the exact float32 value.
- Only the first packet of a frame is decoded, and frames shorter than the packet raise
  ``struct.error``; we split by message_length and count errors instead.
"""

from __future__ import annotations

import random
import struct
import types
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from dhanhq import marketfeed as official

from services import dhan as codec
from services.dhan import (
    DepthLevel,
    DisconnectPacket,
    FullPacket,
    OIPacket,
    PrevClosePacket,
    ProtocolErrors,
    QuotePacket,
    TickerPacket,
    decode_frame,
    depth_levels,
)

EXAMPLES = 3000  # per packet kind
IST = timezone(timedelta(hours=5, minutes=30))


@pytest.fixture(scope="module")
def feed() -> official.MarketFeed:
    client = object.__new__(official.MarketFeed)  # no __init__: no context, no event loop, no socket
    client.on_close = None
    return client


def _price(value: float) -> str:
    return f"{value:.2f}"


def _ist_time_of_day(ltt_epoch: int) -> str:
    return datetime.fromtimestamp(ltt_epoch, IST).strftime("%H:%M:%S")


def _random_frames(code: int, size: int, seed: int) -> Iterator[bytes]:
    """EXAMPLES packets of one kind: half with every body bit random (NaN, inf, huge and
    negative floats, ints over 2**31), half with realistic values and edge cases."""
    rng = random.Random(seed)
    body = size - 8
    for n in range(EXAMPLES):
        segment = rng.choice((0, 1, 2, 3, 4, 5, 7, 8)) if n % 3 else rng.getrandbits(8)
        security_id = rng.getrandbits(32) if n % 2 else rng.randrange(1, 2_000_000)
        header = struct.pack("<BHBI", code, size, segment, security_id)
        if n % 2 == 0:
            yield header + rng.randbytes(body)
        else:
            yield _realistic(code, header, rng)


def _realistic(code: int, header: bytes, rng: random.Random) -> bytes:
    def price() -> float:
        return rng.choice((0.0, 0.05, 0.0025, round(rng.uniform(0.05, 120_000), 2), round(rng.uniform(70, 95), 4)))

    def qty() -> int:
        return rng.choice((0, 1, 2**31 - 1, 2**31, 2**32 - 1, rng.randrange(0, 50_000_000)))

    raw_ltt = rng.choice((0, 19_799, 19_800, 2**31, 2**32 - 1, rng.randrange(1_700_000_000, 1_900_000_000)))
    if code == 2:
        return header + struct.pack("<fI", price(), raw_ltt)
    if code == 4:
        return header + struct.pack(
            "<fHIfIIIffff",
            price(),
            rng.randrange(65536),
            raw_ltt,
            price(),
            qty(),
            qty(),
            qty(),
            price(),
            price(),
            price(),
            price(),
        )
    if code == 5:
        return header + struct.pack("<I", qty())
    if code == 6:
        return header + struct.pack("<fI", price(), qty())
    if code == 8:
        depth = b"".join(
            struct.pack("<IIHHff", qty(), qty(), rng.randrange(65536), rng.randrange(65536), price(), price())
            for _ in range(5)
        )
        return (
            header
            + struct.pack(
                "<fHIfIIIIIIffff",
                price(),
                rng.randrange(65536),
                raw_ltt,
                price(),
                qty(),
                qty(),
                qty(),
                qty(),
                qty(),
                qty(),
                price(),
                price(),
                price(),
                price(),
            )
            + depth
        )
    if code == 50:
        return header + struct.pack(
            "<H", rng.choice((800, 804, 805, 806, 807, 808, 809, 810, 811, 812, 813, 814, 0, 65535))
        )
    raise AssertionError(code)


def _ours(frame: bytes) -> codec.Packet:
    errors = ProtocolErrors()
    packets = decode_frame(frame, errors)
    assert errors.malformed == 0 and len(packets) == 1, errors
    # The general path (memoryview) agrees with the fast path (bytes); repr, because random
    # bodies hold NaN prices and NaN != NaN (float repr is exact otherwise).
    assert repr(decode_frame(memoryview(frame), errors)) == repr(packets)
    return packets[0]


def _check_kind(
    code: int,
    size: int,
    seed: int,
    method: Callable[[bytes], Any],
    compare: Callable[[Any, Any], None],
    feed: official.MarketFeed,
) -> None:
    count = 0
    for frame in _random_frames(code, size, seed):
        theirs = method(frame)
        assert feed.process_data(frame) == theirs  # their dispatcher routes the code the same way
        compare(theirs, _ours(frame))
        count += 1
    assert count == EXAMPLES >= 2000


def test_ticker(feed: official.MarketFeed) -> None:
    def compare(theirs: dict[str, Any], ours: Any) -> None:
        assert type(ours) is TickerPacket
        assert theirs == {
            "type": "Ticker Data",
            "exchange_segment": ours.segment,
            "security_id": ours.security_id,
            "LTP": _price(ours.ltp),
            "LTT": _ist_time_of_day(ours.ltt_epoch),
        }

    _check_kind(2, 16, 2, feed.process_ticker, compare, feed)


def _quote_fields(ours: QuotePacket | FullPacket) -> dict[str, Any]:
    """What process_quote and process_full both give, from our record."""
    return {
        "exchange_segment": ours.segment,
        "security_id": ours.security_id,
        "LTP": _price(ours.ltp),
        "LTQ": ours.ltq,
        "LTT": _ist_time_of_day(ours.ltt_epoch),
        "avg_price": _price(ours.atp),
        "volume": ours.volume,
        "total_sell_quantity": ours.total_sell_qty,
        "total_buy_quantity": ours.total_buy_qty,
        "open": _price(ours.day_open),
        "close": _price(ours.day_close),
        "high": _price(ours.day_high),
        "low": _price(ours.day_low),
    }


def test_quote(feed: official.MarketFeed) -> None:
    def compare(theirs: dict[str, Any], ours: Any) -> None:
        assert type(ours) is QuotePacket
        assert theirs == {"type": "Quote Data", **_quote_fields(ours)}

    _check_kind(4, 50, 4, feed.process_quote, compare, feed)


def test_oi(feed: official.MarketFeed) -> None:
    def compare(theirs: dict[str, Any], ours: Any) -> None:
        assert type(ours) is OIPacket
        assert theirs == {
            "type": "OI Data",
            "exchange_segment": ours.segment,
            "security_id": ours.security_id,
            "OI": ours.oi,
        }

    _check_kind(5, 12, 5, feed.process_oi, compare, feed)


def test_prev_close(feed: official.MarketFeed) -> None:
    def compare(theirs: dict[str, Any], ours: Any) -> None:
        assert type(ours) is PrevClosePacket
        assert theirs == {
            "type": "Previous Close",
            "exchange_segment": ours.segment,
            "security_id": ours.security_id,
            "prev_close": _price(ours.prev_close),
            "prev_OI": ours.prev_oi,
        }

    _check_kind(6, 16, 6, feed.process_prev_close, compare, feed)


def _depth(level: DepthLevel) -> dict[str, Any]:
    return {
        "bid_quantity": level.bid_qty,
        "ask_quantity": level.ask_qty,
        "bid_orders": level.bid_orders,
        "ask_orders": level.ask_orders,
        "bid_price": _price(level.bid_price),
        "ask_price": _price(level.ask_price),
    }


def test_full(feed: official.MarketFeed) -> None:
    def compare(theirs: dict[str, Any], ours: Any) -> None:
        assert type(ours) is FullPacket and len(ours.depth) == 30  # every value of all five levels
        assert theirs == {
            "type": "Full Data",
            **_quote_fields(ours),
            "OI": ours.oi,
            "oi_day_high": ours.day_high_oi,
            "oi_day_low": ours.day_low_oi,
            "depth": [_depth(level) for level in depth_levels(ours.depth)],
        }

    _check_kind(8, 162, 8, feed.process_full, compare, feed)


# The official client's messages, verbatim, by the reason code it compares against.
OFFICIAL_MESSAGES = {
    805: "Disconnected: No. of active websocket connections exceeded",
    806: "Disconnected: Subscribe to Data APIs to continue",
    807: "Disconnected: Access Token is expired",
    808: "Disconnected: Invalid Client ID",  # annexure: 808 = authentication failed (official bug)
    809: "Disconnected: Authentication Failed - check ",  # annexure: 809 = access token invalid (official bug)
}


def test_disconnect(
    feed: official.MarketFeed, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # server_disconnection returns None; record what it unpacks through its module's struct.
    unpacked: list[tuple[Any, ...]] = []

    def recording_unpack(fmt: str, data: bytes) -> tuple[Any, ...]:
        result = struct.unpack(fmt, data)
        unpacked.append(result)
        return result

    monkeypatch.setattr(official, "struct", types.SimpleNamespace(unpack=recording_unpack, calcsize=struct.calcsize))
    closed: list[object] = []
    monkeypatch.setattr(feed, "on_close", closed.append, raising=False)

    count = 0
    for frame in _random_frames(50, 10, 50):
        unpacked.clear()
        assert feed.server_disconnection(frame) is None  # the official client never exposes the reason
        ours = _ours(frame)
        assert type(ours) is DisconnectPacket
        (theirs,) = unpacked
        assert theirs == (50, 10, ours.segment, ours.security_id, ours.reason)
        printed = capsys.readouterr().out
        assert printed == (OFFICIAL_MESSAGES[ours.reason] + "\n" if ours.reason in OFFICIAL_MESSAGES else "")
        count += 1
    assert count == EXAMPLES and len(closed) == EXAMPLES
    # Our record keeps the raw reason; the enum names follow the annexure, not the official messages.
    assert codec.DisconnectReason(808).name == "AUTHENTICATION_FAILED"
    assert codec.DisconnectReason(809).name == "ACCESS_TOKEN_INVALID"
    assert codec.DisconnectReason(810).name == "CLIENT_ID_INVALID"


def test_codes_1_and_7(feed: official.MarketFeed) -> None:
    """The official client ignores code 1 (returns None) and answers a constant string for
    code 7 whatever it holds; we decode neither and count both as skipped."""
    errors = ProtocolErrors()
    for code, theirs in ((1, None), (7, "Markets Open")):
        frame = struct.pack("<BHBI", code, 8, 0, 0)
        assert feed.process_data(frame) == theirs
        assert decode_frame(frame, errors) == []
    assert errors.skipped == {1: 1, 7: 1} and errors.malformed == 0


def test_official_client_decodes_only_the_first_packet(feed: official.MarketFeed) -> None:
    first = codec.encode_oi(2, 44430, 1_000)
    second = codec.encode_oi(2, 44431, 2_000)
    assert feed.process_data(first + second) == {
        "type": "OI Data",
        "exchange_segment": 2,
        "security_id": 44430,
        "OI": 1000,
    }
    assert decode_frame(first + second, ProtocolErrors()) == [OIPacket(2, 44430, 1000), OIPacket(2, 44431, 2000)]
    with pytest.raises(struct.error):
        feed.process_data(first[:10])  # the official client raises on a truncated packet
    errors = ProtocolErrors()
    assert decode_frame(first[:10], errors) == [] and errors.malformed == 1


def test_currency_prices_keep_their_fourth_decimal(feed: official.MarketFeed) -> None:
    frame = codec.encode_ticker(3, 10093, 83.2425, 1_790_000_000)
    assert feed.process_ticker(frame)["LTP"] == "83.24"  # official: rounded to 2 decimals
    ours = _ours(frame)
    assert isinstance(ours, TickerPacket) and f"{ours.ltp:.4f}" == "83.2425"
