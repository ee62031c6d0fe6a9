"""Instrument values at the gateway: one immutable Value per packet applied, holding the
latest decoded tick, OI and previous-close packets, turned into a protobuf Tick (and its
bytes) at most once per mode, however many terminals receive it."""

from __future__ import annotations

from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.feed.codec import FullPacket, OIPacket, PrevClosePacket, QuotePacket, TickerPacket

TICKER, QUOTE, FULL = common_pb2.FEED_MODE_TICKER, common_pb2.FEED_MODE_QUOTE, common_pb2.FEED_MODE_FULL
PART_TICKER, PART_QUOTE, PART_OI, PART_PREV, PART_FULL = (
    feed_pb2.TICK_PART_TICKER, feed_pb2.TICK_PART_QUOTE, feed_pb2.TICK_PART_OI,
    feed_pb2.TICK_PART_PREV_CLOSE, feed_pb2.TICK_PART_FULL,
)
TickPacket = TickerPacket | QuotePacket | FullPacket


class Value:
    __slots__ = ("key_proto", "sequence", "received_us", "tick", "oi", "prev", "_encoded")

    def __init__(
        self,
        key_proto: common_pb2.InstrumentKey,
        sequence: int,
        received_us: int,
        tick: TickPacket | None,
        oi: OIPacket | None,
        prev: PrevClosePacket | None,
    ) -> None:
        self.key_proto = key_proto
        self.sequence = sequence
        self.received_us = received_us
        self.tick = tick
        self.oi = oi
        self.prev = prev
        self._encoded: dict[int, bytes] | None = None

    def message(self, mode: int) -> feed_pb2.Tick:
        """The Tick as a terminal in `mode` sees it: higher modes carry more."""
        tick = self.tick
        message = feed_pb2.Tick(
            key=self.key_proto,
            sequence=self.sequence,
            received_at=Timestamp(seconds=self.received_us // 1_000_000, nanos=self.received_us % 1_000_000 * 1000),
        )
        parts = 0
        if tick is not None:
            parts |= PART_TICKER
            message.last_price = tick.ltp
            message.last_trade_time.seconds = tick.ltt_epoch
            if mode != TICKER and type(tick) is not TickerPacket:
                parts |= PART_QUOTE
                message.last_trade_quantity = tick.ltq  # type: ignore[union-attr]
                message.average_price = tick.atp  # type: ignore[union-attr]
                message.volume = tick.volume  # type: ignore[union-attr]
                message.total_buy_quantity = tick.total_buy_qty  # type: ignore[union-attr]
                message.total_sell_quantity = tick.total_sell_qty  # type: ignore[union-attr]
                message.day_open = tick.day_open  # type: ignore[union-attr]
                message.day_high = tick.day_high  # type: ignore[union-attr]
                message.day_low = tick.day_low  # type: ignore[union-attr]
                message.day_close = tick.day_close  # type: ignore[union-attr]
                if type(tick) is FullPacket:
                    parts |= PART_OI
                    message.open_interest = tick.oi
                    message.day_high_open_interest = tick.day_high_oi
                    message.day_low_open_interest = tick.day_low_oi
                    if mode == FULL:
                        parts |= PART_FULL
                        depth = tick.depth  # flat: (bid_qty, ask_qty, bid_orders, ask_orders, bid_price, ask_price) x 5
                        add = message.depth.add  # add(**fields) is ~1.7x faster than extend(DepthLevel(...))
                        for k in (0, 6, 12, 18, 24):
                            add(bid_price=depth[k + 4], bid_quantity=depth[k], bid_orders=depth[k + 2],
                                ask_price=depth[k + 5], ask_quantity=depth[k + 1], ask_orders=depth[k + 3])
        if self.oi is not None and mode != TICKER and not parts & PART_OI:
            parts |= PART_OI
            message.open_interest = self.oi.oi
        if self.prev is not None:
            parts |= PART_PREV
            message.previous_close = self.prev.prev_close
            message.previous_open_interest = self.prev.prev_oi
        message.present_parts = parts
        return message

    def encoded(self, mode: int) -> bytes:
        cache = self._encoded
        if cache is None:
            cache = self._encoded = {}
        data = cache.get(mode)
        if data is None:
            data = cache[mode] = self.message(mode).SerializeToString()
        return data
