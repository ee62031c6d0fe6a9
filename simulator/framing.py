"""The bytes the simulator writes: WebSocket frames built by hand for the send loop, the
bench-only send-time stamp, and garbage frames for fault tests."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

from websockets.protocol import Protocol

from services.dhan.protocol import PACKET_SIZES

_GARBAGE_CODES = tuple(c for c in range(100, 256))  # no response code is >= 100
MS_PER_DAY = 86_400_000
# Header of an unmasked, unfragmented binary frame (FIN + opcode 2, then the length: 7 bits,
# or 126 and 16 bits) by payload length, for the packets the send loop frames itself.
_FRAME_HEADERS = tuple(
    bytes((0x82, n)) if n < 126 else b"\x82\x7e" + n.to_bytes(2, "big") for n in range(max(PACKET_SIZES.values()) + 1)
)


def send_time_stamp(clock: Any = time.time) -> int:
    """UTC milliseconds of the day now: what ``stamp_send_time`` puts in a Full packet's
    volume field (bench only; fits the int32 field and is monotone during a day)."""
    return int(clock() * 1000.0) % MS_PER_DAY


def garbage_frame(size: int, rng: random.Random | None = None) -> bytes:
    """Random bytes whose first byte is no response code, so a decoder must report an
    error (unknown code, bad length or truncated header) whatever follows."""
    body = bytearray(os.urandom(size))
    body[0] = (rng or random).choice(_GARBAGE_CODES)
    return bytes(body)


class Framer:
    """Frames a batch of packets as binary messages. Server frames are unmasked, so without
    an extension a frame is a constant header plus the packet: framed here, that is much
    cheaper than ``send_binary`` (a Frame, its checks, serialize). Valid only when no
    extension (the bench-only permessage-deflate) was negotiated; websockets' queued output
    (data_to_send) goes first so that the order on the wire is kept, and the caller checks
    the state as send_binary would (nothing can change it between the check and the write:
    no await)."""

    __slots__ = ("_proto", "emit", "frames", "raw")

    def __init__(self, proto: Protocol) -> None:
        self._proto = proto
        self.raw = not proto.extensions
        self.frames: list[bytes] = []  # raw: this batch's framed packets, after websockets' queued output

        def frame(
            packet: bytes, _headers: tuple[bytes, ...] = _FRAME_HEADERS, _append: Any = self.frames.append
        ) -> None:
            _append(_headers[len(packet)] + packet)

        self.emit: Callable[[bytes], None] = frame if self.raw else proto.send_binary

    def begin(self) -> None:
        """Starts a batch (raw: behind websockets' queued output)."""
        if self.raw:
            self.frames.extend(self._proto.data_to_send())

    def take(self) -> bytes:
        """The batch's bytes, ready for the transport."""
        data = b"".join(self.frames if self.raw else self._proto.data_to_send())
        self.frames.clear()
        return data
