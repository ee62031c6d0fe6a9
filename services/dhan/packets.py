"""The records of decoded feed packets, one class per packet kind.

A record is exactly the tuple one ``struct.Struct.unpack_from`` of its layout
(``protocol.RECORD_FORMATS``) returns, retyped with ``tuple.__new__(Record, unpacked)``: no
per-field Python code, no intermediate dicts, no slicing. A Full packet is therefore flat
(16 scalar fields, then the 30 depth fields in wire order); ``FullPacket.depth`` slices the
depth out on demand. NamedTuples via ``tuple.__new__`` are the cheapest typed records
(``__slots__`` classes with ``__init__`` and NamedTuples called normally are slower), and
keeping the record the unpacked tuple itself keeps decoding one C call plus the retyping.

Records hold Dhan's raw last trade time, ``ltt_ist`` (see ``protocol.IST_OFFSET_SECONDS``),
and convert it in the ``ltt_epoch`` property (integer UTC epoch seconds; no ``datetime``
objects): converting while decoding would mean rebuilding the tuple, paid for every packet
while a consumer reads the time of few of them.

Records compare equal only to records of the same class (plain NamedTuples would make
``TickerPacket(1, 2, 3.0, 4) == PrevClosePacket(1, 2, 3.0, 4)``).

The segment byte is passed through unvalidated; map it with
``services.common.instruments.SEGMENTS_BY_WIRE_CODE`` and treat a missing key as unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypeAlias

from services.dhan.protocol import DEPTH_LEVELS, IST_OFFSET_SECONDS


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
        return self[_DEPTH_START:]


_DEPTH_START = FullPacket._fields.index("bid_qty_1")


class DisconnectPacket(NamedTuple):
    """Code 50: the server is closing the connection; ``reason`` is a DisconnectReason value
    (kept as a raw int so that unknown codes survive)."""

    segment: int
    security_id: int
    reason: int


Packet: TypeAlias = TickerPacket | QuotePacket | OIPacket | PrevClosePacket | FullPacket | DisconnectPacket

EMPTY_LEVEL = DepthLevel(0, 0, 0, 0, 0.0, 0.0)
EMPTY_DEPTH: tuple[int | float, ...] = tuple(EMPTY_LEVEL) * DEPTH_LEVELS
_LEVEL_WIDTH = len(DepthLevel._fields)


def depth_levels(depth: Sequence[int | float]) -> tuple[DepthLevel, ...]:
    """A Full packet's flat depth as five named levels."""
    return tuple(DepthLevel._make(depth[k : k + _LEVEL_WIDTH]) for k in range(0, len(EMPTY_DEPTH), _LEVEL_WIDTH))


def _typed_eq(self: tuple[Any, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _typed_ne(self: tuple[Any, ...], other: object) -> bool:
    return type(self) is not type(other) or tuple.__ne__(self, other)


_TYPED_COMPARISON = (("__eq__", _typed_eq), ("__ne__", _typed_ne), ("__hash__", tuple.__hash__))
for _cls in (DepthLevel, TickerPacket, QuotePacket, OIPacket, PrevClosePacket, FullPacket, DisconnectPacket):
    for _name, _method in _TYPED_COMPARISON:
        setattr(_cls, _name, _method)
del _cls, _name, _method
assert len(FullPacket._fields) - _DEPTH_START == len(EMPTY_DEPTH)
