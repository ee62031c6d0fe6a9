"""Dhan's formats, each fact defined once.

The live feed: ``protocol`` (codes, reasons, limits, the binary layouts), ``packets`` (the
decoded records), ``decode`` (frames -> records, the shards' and the gateway's side),
``encode`` (records -> bytes, the simulator's side) and ``requests`` (the JSON a client
sends). Their public names are also importable from this package, as one codec namespace
(``from services import dhan``).

The scrip master: ``master`` (the record and the parser), ``generator`` (a synthetic master
for a trading date) and ``synthetic`` (the levels and option prices the generator and the
simulator share).

Sources: ``/work/shared/reference/dhan-feed-protocol.md`` and the official client ``dhanhq``
2.3.0 (``dhanhq/marketfeed.py``).
"""

from services.dhan.decode import ProtocolErrors, decode_frame, decode_packet
from services.dhan.encode import (
    encode,
    encode_disconnect,
    encode_full,
    encode_oi,
    encode_prev_close,
    encode_quote,
    encode_ticker,
)
from services.dhan.packets import (
    EMPTY_DEPTH,
    EMPTY_LEVEL,
    DepthLevel,
    DisconnectPacket,
    FullPacket,
    OIPacket,
    Packet,
    PrevClosePacket,
    QuotePacket,
    TickerPacket,
    depth_levels,
)
from services.dhan.protocol import (
    FEED_REQUEST_CODES,
    IST_OFFSET_SECONDS,
    MAX_INSTRUMENTS_PER_MESSAGE,
    PACKET_SIZES,
    DisconnectReason,
    FeedMode,
    RequestCode,
    ResponseCode,
)
from services.dhan.requests import (
    Request,
    RequestError,
    build_disconnect,
    build_subscribe_messages,
    build_unsubscribe_messages,
    parse_request,
)

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
]
