"""Instrument values at the gateway: one immutable Value per packet applied, holding the
raw Dhan packets that make it up (the latest tick, OI and previous close), decoded and
encoded at most once per mode, however many terminals receive it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataserver.feed.v1 import feed_pb2

from services.dhan.decode import ProtocolErrors, decode_packet
from services.dhan.packets import OIPacket, Packet, PrevClosePacket
from services.dhan.protocol import FULL_CODE
from services.feed.gateway.encoding import (
    FULL,
    TickPacket,
    build_tick,
    entry,
    full_entry,
)

if TYPE_CHECKING:
    from services.feed.gateway.hub import Instrument

_DECODE_ERRORS = ProtocolErrors()  # never counts: the hub keeps only packets of the right code and size


class Value:
    __slots__ = ("_entries", "_full_entry", "instrument", "oi", "prev", "received_us", "sequence", "tick")

    def __init__(
        self,
        instrument: Instrument,
        sequence: int,
        received_us: int,
        tick: bytes | None,
        oi: bytes | None,
        prev: bytes | None,
    ) -> None:
        self.instrument = instrument
        self.sequence = sequence
        self.received_us = received_us
        self.tick = tick  # raw packets, as the shard forwarded them
        self.oi = oi
        self.prev = prev
        self._full_entry: bytes | None = None
        self._entries: dict[int, bytes] | None = None

    def entry(self, mode: int) -> bytes:
        """This value as a `ticks` entry for a stream in `mode`, encoded once per mode."""
        if mode == FULL:
            found = self._full_entry
            if found is None:
                tick = self.tick
                if tick is not None and tick[0] == FULL_CODE:
                    found = full_entry(self.instrument.full_prefix, self.sequence, self.received_us, tick, self.prev)
                else:
                    found = entry(self.message(mode).SerializeToString())
                self._full_entry = found
            return found
        cache = self._entries
        if cache is None:
            cache = self._entries = {}
        found = cache.get(mode)
        if found is None:
            found = cache[mode] = entry(self.message(mode).SerializeToString())
        return found

    def message(self, mode: int) -> feed_pb2.Tick:
        """The Tick as a terminal in `mode` sees it (the general path: snapshots, low modes)."""
        tick, oi, prev = _decoded(self.tick), _decoded(self.oi), _decoded(self.prev)
        return build_tick(
            self.instrument.key_proto,
            self.sequence,
            self.received_us,
            mode,
            tick if isinstance(tick, TickPacket) else None,
            oi if isinstance(oi, OIPacket) else None,
            prev if isinstance(prev, PrevClosePacket) else None,
        )


def _decoded(packet: bytes | None) -> Packet | None:
    return decode_packet(packet, _DECODE_ERRORS) if packet is not None else None
