"""Binary codec of the Dhan v2 live market feed, and the JSON requests a client sends.

Facts (layouts, codes, time base) are from ``/work/shared/reference/dhan-feed-protocol.md``
and the official client ``dhanhq`` 2.3.0 (``dhanhq/marketfeed.py``).

Server -> client packets are little-endian binary with an 8-byte header: ``uint8
response_code``, ``uint16 message_length`` (whole packet, header included), ``uint8
exchange_segment`` (the wire byte, see ``SEGMENT_WIRE_CODES``), ``uint32 security_id``.

This module is on the hot path (every tick of five 5,000-instrument connections goes
through :func:`decode_frame`), so:

- a record is exactly the tuple one ``struct.Struct.unpack_from`` returns for its packet,
  retyped with ``tuple.__new__(Record, unpacked)``: no per-field Python code, no
  intermediate dicts, no slicing. A Full packet is therefore flat (16 scalar fields, then
  the 30 depth fields in wire order); ``FullPacket.depth`` slices the depth out on demand.
  NamedTuples via ``tuple.__new__`` are the cheapest typed records (``__slots__`` classes
  with ``__init__`` and NamedTuples called normally measured 15-30% slower). Measured on
  CPython 3.11 for a complete Full packet (every field and all five depth levels), per
  packet: the unpack alone ~600 ns, the retyping copy ~150 ns, ``decode_packet`` ~850 ns,
  ~930 ns reading ``ltt_epoch`` too, against ~9,900 ns for the official client's
  ``process_full``; rebuilding the record field by field (converting the LTT, slicing the
  depth) had cost ~1,080 ns;
- records hold Dhan's raw last trade time, ``ltt_ist`` (see :data:`IST_OFFSET_SECONDS`),
  and convert it in the ``ltt_epoch`` property (integer UTC epoch seconds; no
  ``datetime`` objects): converting while decoding would mean rebuilding the tuple, and
  decoding stays one C call plus the retyping, paid for every packet while a consumer
  reads the time of few of them;
- the common case, exactly one packet of a known kind filling the frame, is a dictionary
  look-up and one call, or inline for Full, Quote and Ticker.

Integer signedness. Dhan's documentation calls most integer fields "int32" (and the
disconnect reason "int16"); the official client unpacks all of them unsigned (``I``/``H``).
Every one of them is a non-negative count, quantity, open interest, time or code, so this
codec reads them unsigned like the official client: identical results for every value a
signed field could legitimately hold, and twice the headroom before a day's volume of a
heavily traded contract wraps. Prices are float32, exposed as Python floats (exactly the
float32 value, not rounded).

Records compare equal only to records of the same class (plain NamedTuples would make
``TickerPacket(1, 2, 3.0, 4) == PrevClosePacket(1, 2, 3.0, 4)``).

The segment byte is passed through unvalidated; map it with ``SEGMENTS_BY_WIRE_CODE`` and
treat a missing key as unknown.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from operator import index as _as_int
from typing import Any, NamedTuple, TypeAlias

from services.common.instruments import SEGMENT_WIRE_CODES, SEGMENTS_BY_WIRE_CODE

__all__ = [
    "EMPTY_DEPTH",
    "EMPTY_LEVEL",
    "FEED_REQUEST_CODES",
    "IST_OFFSET_SECONDS",
    "MAX_INSTRUMENTS_PER_MESSAGE",
    "PACKET_SIZES",
    "DepthLevel",
    "DisconnectPacket",
    "DisconnectReason",
    "FeedMode",
    "FullPacket",
    "OIPacket",
    "Packet",
    "PrevClosePacket",
    "ProtocolErrors",
    "QuotePacket",
    "Request",
    "RequestCode",
    "RequestError",
    "ResponseCode",
    "TickerPacket",
    "build_disconnect",
    "build_subscribe_messages",
    "build_unsubscribe_messages",
    "decode_frame",
    "decode_packet",
    "depth_levels",
    "encode",
    "encode_disconnect",
    "encode_full",
    "encode_oi",
    "encode_prev_close",
    "encode_quote",
    "encode_ticker",
    "parse_request",
    "segment_name",
]

# Dhan's LTT counts seconds since 1970-01-01 00:00 *IST* (a local-time epoch): a trade at
# 09:15:00 IST carries the value that a real epoch would have at 09:15:00 UTC. IST is
# UTC+05:30 all year (no DST), so real UTC epoch = Dhan's value - 19800, always.
IST_OFFSET_SECONDS = 19_800

MAX_INSTRUMENTS_PER_MESSAGE = 100


class ResponseCode(IntEnum):
    """Binary packet kinds (server -> client)."""

    INDEX = 1  # layout undocumented; recognised and skipped
    TICKER = 2
    QUOTE = 4
    OI = 5
    PREV_CLOSE = 6
    MARKET_STATUS = 7  # layout undocumented; recognised and skipped
    FULL = 8
    DISCONNECT = 50


# Fixed size (whole packet) of each decoded kind; the length field must match exactly.
PACKET_SIZES: dict[int, int] = {
    ResponseCode.TICKER: 16,
    ResponseCode.QUOTE: 50,
    ResponseCode.OI: 12,
    ResponseCode.PREV_CLOSE: 16,
    ResponseCode.FULL: 162,
    ResponseCode.DISCONNECT: 10,
}
SKIPPED_CODES = frozenset({ResponseCode.INDEX, ResponseCode.MARKET_STATUS})
HEADER_SIZE = 8


class DisconnectReason(IntEnum):
    """Reason codes of a Disconnect packet (the packet itself keeps the raw int)."""

    INTERNAL_ERROR = 800
    INSTRUMENTS_EXCEED_LIMIT = 804
    TOO_MANY_CONNECTIONS = 805  # a 6th socket kicks the 1st; needs a long back-off
    DATA_APIS_NOT_SUBSCRIBED = 806
    ACCESS_TOKEN_EXPIRED = 807  # 807-810: do not retry in a tight loop
    AUTHENTICATION_FAILED = 808
    ACCESS_TOKEN_INVALID = 809
    CLIENT_ID_INVALID = 810
    INVALID_EXPIRY = 811
    INVALID_DATE = 812
    INVALID_SECURITY_ID = 813
    INVALID_REQUEST = 814


# --------------------------------------------------------------------------- records


class DepthLevel(NamedTuple):
    """One of the five depth levels of a Full packet (level 0 is the best)."""

    bid_qty: int
    ask_qty: int
    bid_orders: int
    ask_orders: int
    bid_price: float
    ask_price: float


class TickerPacket(NamedTuple):
    """Code 2: last traded price and time."""

    segment: int
    security_id: int
    ltp: float
    ltt_ist: int  # Dhan's raw value; ltt_epoch is the real UTC epoch

    @property
    def ltt_epoch(self) -> int:
        """Last trade time, real UTC epoch seconds."""
        return self[3] - IST_OFFSET_SECONDS


class QuotePacket(NamedTuple):
    """Code 4: Quote. day_* are the session's open/close/high/low; day_close is "sent after
    market close" per the docs but may carry the previous session's close all day."""

    segment: int
    security_id: int
    ltp: float
    ltq: int
    ltt_ist: int  # Dhan's raw value; ltt_epoch is the real UTC epoch
    atp: float
    volume: int
    total_sell_qty: int
    total_buy_qty: int
    day_open: float
    day_close: float
    day_high: float
    day_low: float

    @property
    def ltt_epoch(self) -> int:
        """Last trade time, real UTC epoch seconds."""
        return self[4] - IST_OFFSET_SECONDS


class OIPacket(NamedTuple):
    """Code 5: open interest (sent with Quote subscriptions)."""

    segment: int
    security_id: int
    oi: int


class PrevClosePacket(NamedTuple):
    """Code 6: previous session's close and open interest."""

    segment: int
    security_id: int
    prev_close: float
    prev_oi: int


class FullPacket(NamedTuple):
    """Code 8: Quote fields plus OI, the day's OI range and five depth levels.

    Flat, in wire order: the 16 scalar fields, then the depth as 6 fields per level from
    level 1 (best) to 5, so that the record is the unpacked tuple itself (see the module
    docstring). ``depth`` gives the 30 depth values as one flat tuple and
    ``depth_levels(packet.depth)`` as five DepthLevel records."""

    segment: int
    security_id: int
    ltp: float
    ltq: int
    ltt_ist: int  # Dhan's raw value; ltt_epoch is the real UTC epoch
    atp: float
    volume: int
    total_sell_qty: int
    total_buy_qty: int
    oi: int
    day_high_oi: int
    day_low_oi: int
    day_open: float
    day_close: float
    day_high: float
    day_low: float
    bid_qty_1: int
    ask_qty_1: int
    bid_orders_1: int
    ask_orders_1: int
    bid_price_1: float
    ask_price_1: float
    bid_qty_2: int
    ask_qty_2: int
    bid_orders_2: int
    ask_orders_2: int
    bid_price_2: float
    ask_price_2: float
    bid_qty_3: int
    ask_qty_3: int
    bid_orders_3: int
    ask_orders_3: int
    bid_price_3: float
    ask_price_3: float
    bid_qty_4: int
    ask_qty_4: int
    bid_orders_4: int
    ask_orders_4: int
    bid_price_4: float
    ask_price_4: float
    bid_qty_5: int
    ask_qty_5: int
    bid_orders_5: int
    ask_orders_5: int
    bid_price_5: float
    ask_price_5: float

    @property
    def ltt_epoch(self) -> int:
        """Last trade time, real UTC epoch seconds."""
        return self[4] - IST_OFFSET_SECONDS

    @property
    def depth(self) -> tuple[int | float, ...]:
        """The 30 depth values, flat and best first: (bid_qty, ask_qty, bid_orders,
        ask_orders, bid_price, ask_price) x 5."""
        return self[16:46]


class DisconnectPacket(NamedTuple):
    """Code 50: the server is closing the connection; ``reason`` is a DisconnectReason value
    (kept as a raw int so that unknown codes survive)."""

    segment: int
    security_id: int
    reason: int


Packet: TypeAlias = TickerPacket | QuotePacket | OIPacket | PrevClosePacket | FullPacket | DisconnectPacket

EMPTY_LEVEL = DepthLevel(0, 0, 0, 0, 0.0, 0.0)
EMPTY_DEPTH: tuple[int | float, ...] = tuple(EMPTY_LEVEL) * 5


def depth_levels(depth: Sequence[int | float]) -> tuple[DepthLevel, ...]:
    """A Full packet's flat depth as five named levels."""
    return tuple(DepthLevel(*depth[k : k + 6]) for k in range(0, 30, 6))  # type: ignore[arg-type]


def _typed_eq(self: tuple[Any, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[arg-type]


def _typed_ne(self: tuple[Any, ...], other: object) -> bool:
    return type(self) is not type(other) or tuple.__ne__(self, other)  # type: ignore[arg-type]


for _cls in (DepthLevel, TickerPacket, QuotePacket, OIPacket, PrevClosePacket, FullPacket, DisconnectPacket):
    _cls.__eq__ = _typed_eq  # type: ignore[assignment,method-assign]
    _cls.__ne__ = _typed_ne  # type: ignore[assignment,method-assign]
    _cls.__hash__ = tuple.__hash__  # type: ignore[assignment,method-assign]
del _cls


# --------------------------------------------------------------------------- protocol errors


class ProtocolErrors:
    """Counters a connection keeps across frames. ``malformed`` counts rejected packets or
    frame tails (unknown code, bad length, truncation); ``skipped`` counts recognised but
    undecoded packets by code (1 index, 7 market status); ``last_error`` describes the
    latest malformed one."""

    __slots__ = ("last_error", "malformed", "skipped")

    def __init__(self) -> None:
        self.malformed = 0
        self.last_error: str | None = None
        self.skipped: Counter[int] = Counter()

    def add(self, text: str) -> None:
        """Counts one malformed packet (or frame tail) described by ``text``."""
        self.malformed += 1
        self.last_error = text

    def __repr__(self) -> str:
        return (
            f"ProtocolErrors(malformed={self.malformed}, skipped={dict(self.skipped)}, last_error={self.last_error!r})"
        )


# --------------------------------------------------------------------------- decoding

# Struct formats cover the whole packet from its first byte; "3x" skips code and length.
_S_TICKER = struct.Struct("<3xBIfI")
_S_QUOTE = struct.Struct("<3xBIfHIfIIIffff")
_S_OI = struct.Struct("<3xBII")
_S_PREV_CLOSE = struct.Struct("<3xBIfI")
_S_FULL = struct.Struct("<3xBIfHIfIIIIIIffff" + "IIHHff" * 5)
_S_DISCONNECT = struct.Struct("<3xBIH")
assert _S_FULL.size == 162 and _S_QUOTE.size == 50 and _S_DISCONNECT.size == 10

_new = tuple.__new__


def _decoder(layout: struct.Struct, record: type) -> Callable[[Any, int], Packet]:
    """decoder(buf, offset) of one packet kind: the unpacked tuple retyped as the record."""
    assert len(layout.unpack(bytes(layout.size))) == len(record._fields)  # type: ignore[attr-defined]

    def decode(buf: Any, off: int, _u: Any = layout.unpack_from, _n: Any = _new, _T: Any = record) -> Packet:
        return _n(_T, _u(buf, off))  # type: ignore[no-any-return]

    return decode


# code -> (exact packet size, decoder(buf, offset))
_DECODERS: dict[int, tuple[int, Callable[[Any, int], Packet]]] = {
    code: (layout.size, _decoder(layout, record))
    for code, layout, record in (
        (2, _S_TICKER, TickerPacket),
        (4, _S_QUOTE, QuotePacket),
        (5, _S_OI, OIPacket),
        (6, _S_PREV_CLOSE, PrevClosePacket),
        (8, _S_FULL, FullPacket),
        (50, _S_DISCONNECT, DisconnectPacket),
    )
}
assert {code: entry[0] for code, entry in _DECODERS.items()} == PACKET_SIZES
_SKIPPED = frozenset(int(code) for code in SKIPPED_CODES)


# The fast paths below have checked the frame's length, so they use Struct.unpack (exact
# length, no offset argument to parse), a little cheaper than unpack_from.


def decode_packet(
    packet: bytes, errors: ProtocolErrors, _uf: Any = _S_FULL.unpack, _n: Any = _new, _F: Any = FullPacket
) -> Packet | None:
    """Decodes a frame holding exactly one packet (what Dhan sends) without the list of
    decode_frame; None when it holds no valid packet (counted in ``errors``)."""
    if len(packet) == 162 and packet[0] == 8 and packet[1] == 162 and packet[2] == 0:
        return _n(_F, _uf(packet))  # type: ignore[no-any-return]
    decoded = decode_frame(packet, errors)
    return decoded[0] if len(decoded) == 1 else None


def decode_frame(
    frame: bytes | bytearray | memoryview,
    errors: ProtocolErrors,
    _uf: Any = _S_FULL.unpack,
    _uq: Any = _S_QUOTE.unpack,
    _ut: Any = _S_TICKER.unpack,
    _n: Any = _new,
    _F: Any = FullPacket,
    _Q: Any = QuotePacket,
    _T: Any = TickerPacket,
) -> list[Packet]:
    """Decodes every packet of one WebSocket binary frame, in order. Never raises on bad
    input: unknown codes, bad lengths and truncation are counted in ``errors``; packets
    before the problem are still returned, and after it when the bad packet's length field
    still delimits it (8 <= length <= bytes left).

    Fast path: a bytes frame holding exactly one Full, Quote or Ticker packet is decoded
    inline (no further Python call); everything else goes through the general splitter,
    which uses the same layouts (the tests check both paths agree)."""
    if type(frame) is bytes or type(frame) is bytearray:
        n = len(frame)
        if n == 162:
            if frame[0] == 8 and frame[1] == 162 and frame[2] == 0:
                return [_n(_F, _uf(frame))]
        elif n == 50:
            if frame[0] == 4 and frame[1] == 50 and frame[2] == 0:
                return [_n(_Q, _uq(frame))]
        elif n == 16:
            if frame[0] == 2 and frame[1] == 16 and frame[2] == 0:
                return [_n(_T, _ut(frame))]
    return _decode_general(frame, errors)


def _decode_general(frame: bytes | bytearray | memoryview, errors: ProtocolErrors) -> list[Packet]:
    if isinstance(frame, memoryview) and (frame.format != "B" or frame.ndim != 1):
        frame = frame.cast("B") if frame.c_contiguous else memoryview(frame.tobytes())
    out: list[Packet] = []
    n = len(frame)
    pos = 0
    while pos < n:
        remaining = n - pos
        if remaining < HEADER_SIZE:
            errors.add(f"truncated header at offset {pos}: {remaining} bytes left, a header needs {HEADER_SIZE}")
            break
        code = frame[pos]
        length = frame[pos + 1] | frame[pos + 2] << 8
        if length < HEADER_SIZE:
            errors.add(f"code {code} at offset {pos}: message_length {length} is shorter than the header")
            break
        if length > remaining:
            errors.add(
                f"code {code} at offset {pos}: message_length {length} but only {remaining} bytes left (truncated)"
            )
            break
        entry = _DECODERS.get(code)
        if entry is not None:
            if length == entry[0]:
                out.append(entry[1](frame, pos))
            else:
                errors.add(f"code {code} at offset {pos}: message_length {length}, expected {entry[0]}")
        elif code in _SKIPPED:
            errors.skipped[code] += 1
        else:
            errors.add(f"unknown response code {code} at offset {pos} (message_length {length})")
        pos += length
    return out


# --------------------------------------------------------------------------- encoding (simulator)

_P_TICKER = struct.Struct("<BHBIfI").pack
_P_QUOTE = struct.Struct("<BHBIfHIfIIIffff").pack
_P_OI = struct.Struct("<BHBII").pack
_P_PREV_CLOSE = struct.Struct("<BHBIfI").pack
_P_FULL = struct.Struct("<BHBIfHIfIIIIIIffff" + "IIHHff" * 5).pack
_P_DISCONNECT = struct.Struct("<BHBIH").pack

# Encoders raise struct.error for ints out of their field's range and OverflowError for
# floats beyond float32; floats are rounded to the nearest float32. The keyword encoders
# take the last trade time as ``ltt_epoch`` (real UTC, what a simulator's clock gives) and
# write Dhan's IST-based value; encode(record) writes the record's raw ``ltt_ist`` as is.


def encode_ticker(segment: int, security_id: int, ltp: float, ltt_epoch: int) -> bytes:
    return _P_TICKER(2, 16, segment, security_id, ltp, ltt_epoch + IST_OFFSET_SECONDS)


def encode_quote(
    segment: int,
    security_id: int,
    ltp: float,
    ltq: int,
    ltt_epoch: int,
    atp: float,
    volume: int,
    total_sell_qty: int,
    total_buy_qty: int,
    day_open: float,
    day_close: float,
    day_high: float,
    day_low: float,
) -> bytes:
    return _P_QUOTE(
        4, 50, segment, security_id, ltp, ltq, ltt_epoch + IST_OFFSET_SECONDS, atp, volume, total_sell_qty, total_buy_qty,
        day_open, day_close, day_high, day_low,
    )  # fmt: skip


def encode_oi(segment: int, security_id: int, oi: int) -> bytes:
    return _P_OI(5, 12, segment, security_id, oi)


def encode_prev_close(segment: int, security_id: int, prev_close: float, prev_oi: int) -> bytes:
    return _P_PREV_CLOSE(6, 16, segment, security_id, prev_close, prev_oi)


def encode_full(
    segment: int,
    security_id: int,
    ltp: float,
    ltq: int,
    ltt_epoch: int,
    atp: float,
    volume: int,
    total_sell_qty: int,
    total_buy_qty: int,
    oi: int,
    day_high_oi: int,
    day_low_oi: int,
    day_open: float,
    day_close: float,
    day_high: float,
    day_low: float,
    depth: Sequence[Any] = EMPTY_DEPTH,
) -> bytes:
    """``depth``: five levels best first (DepthLevel or 6-sequences; EMPTY_LEVEL for empty
    ones), or the flat 30 values of FullPacket.depth."""
    if len(depth) == 5:
        flat = [value for level in depth for value in level]
    elif len(depth) == 30:
        flat = list(depth)
    else:
        raise ValueError(f"a Full packet has exactly 5 depth levels (or 30 flat values), got {len(depth)}")
    return _P_FULL(
        8, 162, segment, security_id, ltp, ltq, ltt_epoch + IST_OFFSET_SECONDS, atp, volume, total_sell_qty, total_buy_qty,
        oi, day_high_oi, day_low_oi, day_open, day_close, day_high, day_low, *flat,
    )  # fmt: skip


def encode_disconnect(reason: int, segment: int = 0, security_id: int = 0) -> bytes:
    return _P_DISCONNECT(50, 10, segment, security_id, reason)


# A record holds its packet's fields in wire order (raw LTT, flat depth): code and length,
# then the record as is.
_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    TickerPacket: lambda p: _P_TICKER(2, 16, *p),
    QuotePacket: lambda p: _P_QUOTE(4, 50, *p),
    OIPacket: lambda p: _P_OI(5, 12, *p),
    PrevClosePacket: lambda p: _P_PREV_CLOSE(6, 16, *p),
    FullPacket: lambda p: _P_FULL(8, 162, *p),
    DisconnectPacket: lambda p: _P_DISCONNECT(50, 10, *p),
}


def encode(packet: Packet) -> bytes:
    """The exact bytes of one packet; decode_frame(encode(p)) == [p] for float32 values."""
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError(f"not a packet record: {type(packet).__name__}") from None
    return encoder(packet)


# --------------------------------------------------------------------------- JSON requests


class RequestCode(IntEnum):
    """Client -> server request codes (Dhan annexure "Feed Request Code")."""

    CONNECT = 11  # v1 binary authorisation packet; v2 authenticates in the URL and never sends it
    DISCONNECT = 12
    SUBSCRIBE_TICKER = 15
    UNSUBSCRIBE_TICKER = 16
    SUBSCRIBE_QUOTE = 17
    UNSUBSCRIBE_QUOTE = 18
    SUBSCRIBE_FULL = 21
    UNSUBSCRIBE_FULL = 22
    SUBSCRIBE_DEPTH = 23  # 20/200-level depth endpoint only
    UNSUBSCRIBE_DEPTH = 24  # classic annexure and the Python client; the 2026 docs portal says 25


class FeedMode(IntEnum):
    """Subscription mode on the live feed; the value is the subscribe request code."""

    TICKER = 15
    QUOTE = 17
    FULL = 21

    @property
    def subscribe_code(self) -> RequestCode:
        return RequestCode(self.value)

    @property
    def unsubscribe_code(self) -> RequestCode:
        return RequestCode(self.value + 1)


# Codes the live-feed endpoint accepts (parse_request's default).
FEED_REQUEST_CODES = frozenset(
    {
        RequestCode.DISCONNECT,
        RequestCode.SUBSCRIBE_TICKER,
        RequestCode.UNSUBSCRIBE_TICKER,
        RequestCode.SUBSCRIBE_QUOTE,
        RequestCode.UNSUBSCRIBE_QUOTE,
        RequestCode.SUBSCRIBE_FULL,
        RequestCode.UNSUBSCRIBE_FULL,
    }
)
_UINT32_MAX = 0xFFFF_FFFF


class RequestError(ValueError):
    """A client request the server refuses (bad JSON or shape)."""


@dataclass(slots=True)
class Request:
    code: RequestCode
    instruments: list[tuple[str, int]] = field(default_factory=list)  # (segment name, security id)


def _instrument_entries(instruments: Iterable[tuple[str, int]]) -> list[dict[str, str]]:
    entries = []
    for segment, security_id in instruments:
        if segment not in SEGMENT_WIRE_CODES:
            raise ValueError(f"unknown exchange segment {segment!r}; known: {', '.join(SEGMENT_WIRE_CODES)}")
        sid = _as_int(security_id)
        if isinstance(security_id, bool) or not 0 <= sid <= _UINT32_MAX:
            raise ValueError(f"security id {security_id!r} is not a uint32")
        entries.append({"ExchangeSegment": segment, "SecurityId": str(sid)})
    return entries


def _build(code: int, instruments: Iterable[tuple[str, int]]) -> list[str]:
    entries = _instrument_entries(instruments)
    step = MAX_INSTRUMENTS_PER_MESSAGE
    return [
        json.dumps({"RequestCode": code, "InstrumentCount": len(chunk), "InstrumentList": chunk}, separators=(",", ":"))
        for chunk in (entries[i : i + step] for i in range(0, len(entries), step))
    ]


def build_subscribe_messages(instruments: Iterable[tuple[str, int]], mode: FeedMode) -> list[str]:
    """JSON text frames subscribing ``(segment name, security id)`` pairs in ``mode``, at most
    100 per message, in the given order (no de-duplication). No instruments: no messages."""
    return _build(FeedMode(mode).subscribe_code, instruments)


def build_unsubscribe_messages(instruments: Iterable[tuple[str, int]], mode: FeedMode) -> list[str]:
    """Like build_subscribe_messages with the mode's unsubscribe code."""
    return _build(FeedMode(mode).unsubscribe_code, instruments)


def build_disconnect() -> str:
    return json.dumps({"RequestCode": int(RequestCode.DISCONNECT)})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(text: str | bytes, allowed: Iterable[int] = FEED_REQUEST_CODES) -> Request:
    """Parses and validates a client request; raises RequestError saying what is wrong.
    ``allowed``: the request codes the endpoint accepts (default: the live feed's)."""
    try:
        message = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise RequestError(f"request must be a JSON object, got {type(message).__name__}")
    if "RequestCode" not in message:
        raise RequestError("request has no RequestCode")
    raw_code = message["RequestCode"]
    if not _is_int(raw_code):
        raise RequestError(f"RequestCode must be an integer, got {raw_code!r}")
    allowed_codes = frozenset(int(c) for c in allowed)
    if raw_code not in allowed_codes:
        raise RequestError(f"RequestCode {raw_code} is not accepted here (accepted: {sorted(allowed_codes)})")
    try:
        code = RequestCode(raw_code)
    except ValueError:
        raise RequestError(f"unknown RequestCode {raw_code}") from None
    if code is RequestCode.DISCONNECT:
        return Request(code, [])
    if code is RequestCode.CONNECT:
        raise RequestError("RequestCode 11 (v1 connect) has no JSON form; v2 authenticates in the URL")

    for key in ("InstrumentCount", "InstrumentList"):
        if key not in message:
            raise RequestError(f"RequestCode {raw_code} needs {key}")
    count = message["InstrumentCount"]
    entries = message["InstrumentList"]
    if not _is_int(count):
        raise RequestError(f"InstrumentCount must be an integer, got {count!r}")
    if not isinstance(entries, list):
        raise RequestError(f"InstrumentList must be a list, got {type(entries).__name__}")
    if not entries:
        raise RequestError("InstrumentList is empty")
    if len(entries) > MAX_INSTRUMENTS_PER_MESSAGE:
        raise RequestError(
            f"InstrumentList has {len(entries)} instruments; at most {MAX_INSTRUMENTS_PER_MESSAGE} per message"
        )
    if count != len(entries):
        raise RequestError(f"InstrumentCount {count} does not match the {len(entries)} entries of InstrumentList")

    instruments: list[tuple[str, int]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RequestError(f"InstrumentList[{i}] must be an object, got {type(entry).__name__}")
        segment = entry.get("ExchangeSegment")
        security_id = entry.get("SecurityId")
        if segment is None or security_id is None:
            raise RequestError(f"InstrumentList[{i}] needs ExchangeSegment and SecurityId")
        if not isinstance(segment, str) or segment not in SEGMENT_WIRE_CODES:
            raise RequestError(f"InstrumentList[{i}]: unknown ExchangeSegment {segment!r}")
        if not isinstance(security_id, str):
            raise RequestError(f"InstrumentList[{i}]: SecurityId must be a JSON string, got {security_id!r}")
        if not (security_id.isascii() and security_id.isdigit()) or int(security_id) > _UINT32_MAX:
            raise RequestError(f"InstrumentList[{i}]: SecurityId {security_id!r} is not a decimal uint32")
        instruments.append((segment, int(security_id)))
    return Request(code, instruments)


def segment_name(wire_code: int) -> str | None:
    """The Dhan segment name of a packet's segment byte, or None for an unknown byte."""
    return SEGMENTS_BY_WIRE_CODE.get(wire_code)
