"""The Dhan v2 live feed's protocol facts, each defined once: response and request codes,
disconnect reasons, the time base, the limits, and the binary layouts (the decoder, the
encoder, the shard's and the gateway's hot loops all build on the layouts here).

Server -> client packets are little-endian binary with an 8-byte header: ``uint8
response_code``, ``uint16 message_length`` (whole packet, header included), ``uint8
exchange_segment`` (the wire byte, see ``services.common.instruments.SEGMENT_WIRE_CODES``),
``uint32 security_id``. Read as one little-endian uint64 (:data:`HEAD`), the header is
``code | length << 8 | key << 24``, where the key (segment byte | security id << 8) names
the instrument (``services.common.keys``): one unpack gives all three.

Integer signedness. Dhan's documentation calls most integer fields "int32" (and the
disconnect reason "int16"); the official client unpacks all of them unsigned (``I``/``H``).
Every one of them is a non-negative count, quantity, open interest, time or code, so the
layouts read them unsigned like the official client: identical results for every value a
signed field could legitimately hold, and twice the headroom before a day's volume of a
heavily traded contract wraps. Prices are float32.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

# Dhan's LTT counts seconds since 1970-01-01 00:00 *IST* (a local-time epoch): a trade at
# 09:15:00 IST carries the value that a real epoch would have at 09:15:00 UTC. IST is
# UTC+05:30 all year (no DST), so real UTC epoch = Dhan's value - 19800, always.
IST_OFFSET_SECONDS: Final = 19_800

MAX_INSTRUMENTS_PER_MESSAGE: Final = 100


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


# Codes the live-feed endpoint accepts.
FEED_REQUEST_CODES: Final = frozenset(
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

# --------------------------------------------------------------------------- binary layouts
# struct codes, little-endian and unpadded (every format below is used with "<").

CODE_LENGTH_FIELDS: Final = "BH"  # response code, message length
KEY_FIELDS: Final = "BI"  # exchange segment byte, security id
HEADER_FIELDS: Final = CODE_LENGTH_FIELDS + KEY_FIELDS
HEADER_SIZE: Final = struct.calcsize("<" + HEADER_FIELDS)

# The header as one int: code | length << 8 | key << 24 (hot loops shift it inline).
HEAD: Final = struct.Struct("<Q")
LENGTH_SHIFT: Final = 8
KEY_SHIFT: Final = 24


def split_head(head: int) -> tuple[int, int, int]:
    """(code, length, key) of a packet head read with :data:`HEAD`."""
    return head & 0xFF, (head >> LENGTH_SHIFT) & 0xFFFF, head >> KEY_SHIFT


# Fields after the header, per packet kind, in wire order.
_TRADE = "fHIfIII"  # ltp, ltq, ltt, atp, volume, total sell qty, total buy qty
_DAY = "ffff"  # day open, close, high, low
TICKER_FIELDS: Final = "fI"  # ltp, ltt
QUOTE_FIELDS: Final = _TRADE + _DAY
OI_FIELDS: Final = "I"  # open interest
PREV_CLOSE_FIELDS: Final = "fI"  # previous close, previous open interest
DISCONNECT_FIELDS: Final = "H"  # reason
# A Full packet: the Quote's trade fields, OI and the day's OI range, the day's prices, then
# five depth levels from the best, each quantities then prices.
FULL_SCALAR_FIELDS: Final = _TRADE + "III" + _DAY  # ... oi, day high oi, day low oi ...
DEPTH_QUANTITY_FIELDS: Final = "IIHH"  # bid qty, ask qty, bid orders, ask orders
DEPTH_PRICE_FIELDS: Final = "ff"  # bid price, ask price
DEPTH_LEVEL_FIELDS: Final = DEPTH_QUANTITY_FIELDS + DEPTH_PRICE_FIELDS
DEPTH_LEVELS: Final = 5
FULL_FIELDS: Final = FULL_SCALAR_FIELDS + DEPTH_LEVEL_FIELDS * DEPTH_LEVELS

BODY_FIELDS: Final[dict[int, str]] = {
    ResponseCode.TICKER: TICKER_FIELDS,
    ResponseCode.QUOTE: QUOTE_FIELDS,
    ResponseCode.OI: OI_FIELDS,
    ResponseCode.PREV_CLOSE: PREV_CLOSE_FIELDS,
    ResponseCode.FULL: FULL_FIELDS,
    ResponseCode.DISCONNECT: DISCONNECT_FIELDS,
}
# The whole packet (what an encoder packs) and the packet minus code and length (what a
# decoded record holds: segment, security id, then the body).
PACKET_FORMATS: Final = {code: "<" + HEADER_FIELDS + fields for code, fields in BODY_FIELDS.items()}
RECORD_FORMATS: Final = {
    code: f"<{struct.calcsize('<' + CODE_LENGTH_FIELDS)}x{KEY_FIELDS}{fields}" for code, fields in BODY_FIELDS.items()
}
# Fixed size (whole packet) of each decoded kind; the length field must match exactly.
PACKET_SIZES: Final = {code: struct.calcsize(layout) for code, layout in PACKET_FORMATS.items()}
SKIPPED_CODES: Final = frozenset({ResponseCode.INDEX, ResponseCode.MARKET_STATUS})

# Plain ints of the codes and sizes, for the hot loops.
TICKER_CODE: Final = int(ResponseCode.TICKER)
QUOTE_CODE: Final = int(ResponseCode.QUOTE)
OI_CODE: Final = int(ResponseCode.OI)
PREV_CLOSE_CODE: Final = int(ResponseCode.PREV_CLOSE)
FULL_CODE: Final = int(ResponseCode.FULL)
DISCONNECT_CODE: Final = int(ResponseCode.DISCONNECT)
TICK_CODES: Final = frozenset({TICKER_CODE, QUOTE_CODE, FULL_CODE})  # the packets that carry a price
TICKER_SIZE: Final = PACKET_SIZES[ResponseCode.TICKER]
QUOTE_SIZE: Final = PACKET_SIZES[ResponseCode.QUOTE]
FULL_SIZE: Final = PACKET_SIZES[ResponseCode.FULL]
