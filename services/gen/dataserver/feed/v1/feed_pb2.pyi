import datetime

from dataserver.common.v1 import common_pb2 as _common_pb2
from dataserver.subscription.v1 import subscription_pb2 as _subscription_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TickPart(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TICK_PART_UNSPECIFIED: _ClassVar[TickPart]
    TICK_PART_TICKER: _ClassVar[TickPart]
    TICK_PART_QUOTE: _ClassVar[TickPart]
    TICK_PART_OI: _ClassVar[TickPart]
    TICK_PART_PREV_CLOSE: _ClassVar[TickPart]
    TICK_PART_FULL: _ClassVar[TickPart]

class InstrumentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTRUMENT_STATUS_UNSPECIFIED: _ClassVar[InstrumentStatus]
    INSTRUMENT_STATUS_SUBSCRIBED: _ClassVar[InstrumentStatus]
    INSTRUMENT_STATUS_NOT_FOUND: _ClassVar[InstrumentStatus]
    INSTRUMENT_STATUS_NOT_SUBSCRIBED_UPSTREAM: _ClassVar[InstrumentStatus]
    INSTRUMENT_STATUS_LIMIT_EXCEEDED: _ClassVar[InstrumentStatus]
    INSTRUMENT_STATUS_REMOVED: _ClassVar[InstrumentStatus]

class UpstreamState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPSTREAM_STATE_UNSPECIFIED: _ClassVar[UpstreamState]
    UPSTREAM_STATE_INTERRUPTED: _ClassVar[UpstreamState]
    UPSTREAM_STATE_RESTORED: _ClassVar[UpstreamState]

class UpstreamCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPSTREAM_CAUSE_UNSPECIFIED: _ClassVar[UpstreamCause]
    UPSTREAM_CAUSE_RECONNECTING: _ClassVar[UpstreamCause]
    UPSTREAM_CAUSE_KICKED: _ClassVar[UpstreamCause]
    UPSTREAM_CAUSE_STOPPED: _ClassVar[UpstreamCause]
    UPSTREAM_CAUSE_SILENT: _ClassVar[UpstreamCause]
    UPSTREAM_CAUSE_SHARD_UNREACHABLE: _ClassVar[UpstreamCause]
    UPSTREAM_CAUSE_MOVED: _ClassVar[UpstreamCause]

class WatchlistFollowingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCHLIST_FOLLOWING_STATE_UNSPECIFIED: _ClassVar[WatchlistFollowingState]
    WATCHLIST_FOLLOWING_STATE_PAUSED: _ClassVar[WatchlistFollowingState]
    WATCHLIST_FOLLOWING_STATE_RESUMED: _ClassVar[WatchlistFollowingState]

class MarketPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MARKET_PHASE_UNSPECIFIED: _ClassVar[MarketPhase]
    MARKET_PHASE_PRE_OPEN: _ClassVar[MarketPhase]
    MARKET_PHASE_OPEN: _ClassVar[MarketPhase]
    MARKET_PHASE_CLOSED: _ClassVar[MarketPhase]
    MARKET_PHASE_HOLIDAY: _ClassVar[MarketPhase]

class ConnectionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTION_STATE_UNSPECIFIED: _ClassVar[ConnectionState]
    CONNECTION_STATE_CONNECTING: _ClassVar[ConnectionState]
    CONNECTION_STATE_CONNECTED: _ClassVar[ConnectionState]
    CONNECTION_STATE_BACKING_OFF: _ClassVar[ConnectionState]
    CONNECTION_STATE_STOPPED: _ClassVar[ConnectionState]

class GreeksStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GREEKS_STATUS_UNSPECIFIED: _ClassVar[GreeksStatus]
    GREEKS_STATUS_COMPUTED: _ClassVar[GreeksStatus]
    GREEKS_STATUS_NO_PRICE: _ClassVar[GreeksStatus]
    GREEKS_STATUS_NO_IMPLIED_VOLATILITY: _ClassVar[GreeksStatus]
    GREEKS_STATUS_NO_FORWARD: _ClassVar[GreeksStatus]

class ForwardSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORWARD_SOURCE_UNSPECIFIED: _ClassVar[ForwardSource]
    FORWARD_SOURCE_PUT_CALL_PARITY: _ClassVar[ForwardSource]
    FORWARD_SOURCE_SPOT_CARRY: _ClassVar[ForwardSource]
    FORWARD_SOURCE_LISTED_FUTURE: _ClassVar[ForwardSource]
TICK_PART_UNSPECIFIED: TickPart
TICK_PART_TICKER: TickPart
TICK_PART_QUOTE: TickPart
TICK_PART_OI: TickPart
TICK_PART_PREV_CLOSE: TickPart
TICK_PART_FULL: TickPart
INSTRUMENT_STATUS_UNSPECIFIED: InstrumentStatus
INSTRUMENT_STATUS_SUBSCRIBED: InstrumentStatus
INSTRUMENT_STATUS_NOT_FOUND: InstrumentStatus
INSTRUMENT_STATUS_NOT_SUBSCRIBED_UPSTREAM: InstrumentStatus
INSTRUMENT_STATUS_LIMIT_EXCEEDED: InstrumentStatus
INSTRUMENT_STATUS_REMOVED: InstrumentStatus
UPSTREAM_STATE_UNSPECIFIED: UpstreamState
UPSTREAM_STATE_INTERRUPTED: UpstreamState
UPSTREAM_STATE_RESTORED: UpstreamState
UPSTREAM_CAUSE_UNSPECIFIED: UpstreamCause
UPSTREAM_CAUSE_RECONNECTING: UpstreamCause
UPSTREAM_CAUSE_KICKED: UpstreamCause
UPSTREAM_CAUSE_STOPPED: UpstreamCause
UPSTREAM_CAUSE_SILENT: UpstreamCause
UPSTREAM_CAUSE_SHARD_UNREACHABLE: UpstreamCause
UPSTREAM_CAUSE_MOVED: UpstreamCause
WATCHLIST_FOLLOWING_STATE_UNSPECIFIED: WatchlistFollowingState
WATCHLIST_FOLLOWING_STATE_PAUSED: WatchlistFollowingState
WATCHLIST_FOLLOWING_STATE_RESUMED: WatchlistFollowingState
MARKET_PHASE_UNSPECIFIED: MarketPhase
MARKET_PHASE_PRE_OPEN: MarketPhase
MARKET_PHASE_OPEN: MarketPhase
MARKET_PHASE_CLOSED: MarketPhase
MARKET_PHASE_HOLIDAY: MarketPhase
CONNECTION_STATE_UNSPECIFIED: ConnectionState
CONNECTION_STATE_CONNECTING: ConnectionState
CONNECTION_STATE_CONNECTED: ConnectionState
CONNECTION_STATE_BACKING_OFF: ConnectionState
CONNECTION_STATE_STOPPED: ConnectionState
GREEKS_STATUS_UNSPECIFIED: GreeksStatus
GREEKS_STATUS_COMPUTED: GreeksStatus
GREEKS_STATUS_NO_PRICE: GreeksStatus
GREEKS_STATUS_NO_IMPLIED_VOLATILITY: GreeksStatus
GREEKS_STATUS_NO_FORWARD: GreeksStatus
FORWARD_SOURCE_UNSPECIFIED: ForwardSource
FORWARD_SOURCE_PUT_CALL_PARITY: ForwardSource
FORWARD_SOURCE_SPOT_CARRY: ForwardSource
FORWARD_SOURCE_LISTED_FUTURE: ForwardSource

class DepthLevel(_message.Message):
    __slots__ = ("bid_price", "bid_quantity", "bid_orders", "ask_price", "ask_quantity", "ask_orders")
    BID_PRICE_FIELD_NUMBER: _ClassVar[int]
    BID_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    BID_ORDERS_FIELD_NUMBER: _ClassVar[int]
    ASK_PRICE_FIELD_NUMBER: _ClassVar[int]
    ASK_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ASK_ORDERS_FIELD_NUMBER: _ClassVar[int]
    bid_price: float
    bid_quantity: int
    bid_orders: int
    ask_price: float
    ask_quantity: int
    ask_orders: int
    def __init__(self, bid_price: _Optional[float] = ..., bid_quantity: _Optional[int] = ..., bid_orders: _Optional[int] = ..., ask_price: _Optional[float] = ..., ask_quantity: _Optional[int] = ..., ask_orders: _Optional[int] = ...) -> None: ...

class Tick(_message.Message):
    __slots__ = ("key", "sequence", "present_parts", "last_price", "last_trade_time_seconds", "last_trade_quantity", "average_price", "volume", "total_buy_quantity", "total_sell_quantity", "open_interest", "depth", "receive_time_micros", "day_open", "day_high", "day_low", "day_close", "day_high_open_interest", "day_low_open_interest", "previous_close", "previous_open_interest")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PRESENT_PARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_PRICE_FIELD_NUMBER: _ClassVar[int]
    LAST_TRADE_TIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_TRADE_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_PRICE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BUY_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SELL_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_MICROS_FIELD_NUMBER: _ClassVar[int]
    DAY_OPEN_FIELD_NUMBER: _ClassVar[int]
    DAY_HIGH_FIELD_NUMBER: _ClassVar[int]
    DAY_LOW_FIELD_NUMBER: _ClassVar[int]
    DAY_CLOSE_FIELD_NUMBER: _ClassVar[int]
    DAY_HIGH_OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    DAY_LOW_OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_CLOSE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    sequence: int
    present_parts: int
    last_price: float
    last_trade_time_seconds: int
    last_trade_quantity: int
    average_price: float
    volume: int
    total_buy_quantity: int
    total_sell_quantity: int
    open_interest: int
    depth: _containers.RepeatedCompositeFieldContainer[DepthLevel]
    receive_time_micros: int
    day_open: float
    day_high: float
    day_low: float
    day_close: float
    day_high_open_interest: int
    day_low_open_interest: int
    previous_close: float
    previous_open_interest: int
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., sequence: _Optional[int] = ..., present_parts: _Optional[int] = ..., last_price: _Optional[float] = ..., last_trade_time_seconds: _Optional[int] = ..., last_trade_quantity: _Optional[int] = ..., average_price: _Optional[float] = ..., volume: _Optional[int] = ..., total_buy_quantity: _Optional[int] = ..., total_sell_quantity: _Optional[int] = ..., open_interest: _Optional[int] = ..., depth: _Optional[_Iterable[_Union[DepthLevel, _Mapping]]] = ..., receive_time_micros: _Optional[int] = ..., day_open: _Optional[float] = ..., day_high: _Optional[float] = ..., day_low: _Optional[float] = ..., day_close: _Optional[float] = ..., day_high_open_interest: _Optional[int] = ..., day_low_open_interest: _Optional[int] = ..., previous_close: _Optional[float] = ..., previous_open_interest: _Optional[int] = ...) -> None: ...

class TickBatch(_message.Message):
    __slots__ = ("ticks", "sent_at")
    TICKS_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    ticks: _containers.RepeatedCompositeFieldContainer[Tick]
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, ticks: _Optional[_Iterable[_Union[Tick, _Mapping]]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("server_time",)
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InstrumentList(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ...) -> None: ...

class BatchOptions(_message.Message):
    __slots__ = ("max_batch_size", "max_batch_delay")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_DELAY_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_batch_delay: _duration_pb2.Duration
    def __init__(self, max_batch_size: _Optional[int] = ..., max_batch_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class InstrumentState(_message.Message):
    __slots__ = ("key", "status", "mode", "awaiting_first_tick", "message", "stale", "stale_cause", "stale_reason", "stale_since")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    AWAITING_FIRST_TICK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    STALE_CAUSE_FIELD_NUMBER: _ClassVar[int]
    STALE_REASON_FIELD_NUMBER: _ClassVar[int]
    STALE_SINCE_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    status: InstrumentStatus
    mode: _common_pb2.FeedMode
    awaiting_first_tick: bool
    message: str
    stale: bool
    stale_cause: UpstreamCause
    stale_reason: str
    stale_since: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., status: _Optional[_Union[InstrumentStatus, str]] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., awaiting_first_tick: _Optional[bool] = ..., message: _Optional[str] = ..., stale: _Optional[bool] = ..., stale_cause: _Optional[_Union[UpstreamCause, str]] = ..., stale_reason: _Optional[str] = ..., stale_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TickSnapshot(_message.Message):
    __slots__ = ("ticks", "instruments", "correlation_id", "market_states")
    TICKS_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    MARKET_STATES_FIELD_NUMBER: _ClassVar[int]
    ticks: _containers.RepeatedCompositeFieldContainer[Tick]
    instruments: _containers.RepeatedCompositeFieldContainer[InstrumentState]
    correlation_id: str
    market_states: _containers.RepeatedCompositeFieldContainer[SegmentMarketState]
    def __init__(self, ticks: _Optional[_Iterable[_Union[Tick, _Mapping]]] = ..., instruments: _Optional[_Iterable[_Union[InstrumentState, _Mapping]]] = ..., correlation_id: _Optional[str] = ..., market_states: _Optional[_Iterable[_Union[SegmentMarketState, _Mapping]]] = ...) -> None: ...

class UpstreamStatusChange(_message.Message):
    __slots__ = ("shard_id", "state", "affected_instruments", "shard_restarted", "interrupted_at", "reason", "instruments", "cause", "disconnect_code")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_RESTARTED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_CODE_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    state: UpstreamState
    affected_instruments: int
    shard_restarted: bool
    interrupted_at: _timestamp_pb2.Timestamp
    reason: str
    instruments: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    cause: UpstreamCause
    disconnect_code: int
    def __init__(self, shard_id: _Optional[int] = ..., state: _Optional[_Union[UpstreamState, str]] = ..., affected_instruments: _Optional[int] = ..., shard_restarted: _Optional[bool] = ..., interrupted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., instruments: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ..., cause: _Optional[_Union[UpstreamCause, str]] = ..., disconnect_code: _Optional[int] = ...) -> None: ...

class WatchlistFollowing(_message.Message):
    __slots__ = ("state", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: WatchlistFollowingState
    reason: str
    def __init__(self, state: _Optional[_Union[WatchlistFollowingState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ServerDraining(_message.Message):
    __slots__ = ("reason", "deadline")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    deadline: _duration_pb2.Duration
    def __init__(self, reason: _Optional[str] = ..., deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SlowConsumerWarning(_message.Message):
    __slots__ = ("lag", "conflated_updates", "pending_instruments")
    LAG_FIELD_NUMBER: _ClassVar[int]
    CONFLATED_UPDATES_FIELD_NUMBER: _ClassVar[int]
    PENDING_INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    lag: _duration_pb2.Duration
    conflated_updates: int
    pending_instruments: int
    def __init__(self, lag: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., conflated_updates: _Optional[int] = ..., pending_instruments: _Optional[int] = ...) -> None: ...

class StreamEvent(_message.Message):
    __slots__ = ("occurred_at", "watchlist", "upstream", "slow_consumer", "instrument_status", "market_phase", "watchlist_following", "draining")
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    WATCHLIST_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    SLOW_CONSUMER_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_STATUS_FIELD_NUMBER: _ClassVar[int]
    MARKET_PHASE_FIELD_NUMBER: _ClassVar[int]
    WATCHLIST_FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    occurred_at: _timestamp_pb2.Timestamp
    watchlist: _subscription_pb2.WatchlistEvent
    upstream: UpstreamStatusChange
    slow_consumer: SlowConsumerWarning
    instrument_status: InstrumentState
    market_phase: MarketPhaseChange
    watchlist_following: WatchlistFollowing
    draining: ServerDraining
    def __init__(self, occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., watchlist: _Optional[_Union[_subscription_pb2.WatchlistEvent, _Mapping]] = ..., upstream: _Optional[_Union[UpstreamStatusChange, _Mapping]] = ..., slow_consumer: _Optional[_Union[SlowConsumerWarning, _Mapping]] = ..., instrument_status: _Optional[_Union[InstrumentState, _Mapping]] = ..., market_phase: _Optional[_Union[MarketPhaseChange, _Mapping]] = ..., watchlist_following: _Optional[_Union[WatchlistFollowing, _Mapping]] = ..., draining: _Optional[_Union[ServerDraining, _Mapping]] = ...) -> None: ...

class StreamTicksRequest(_message.Message):
    __slots__ = ("instruments", "my_watchlist", "mode", "batch_options")
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    MY_WATCHLIST_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BATCH_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    instruments: InstrumentList
    my_watchlist: bool
    mode: _common_pb2.FeedMode
    batch_options: BatchOptions
    def __init__(self, instruments: _Optional[_Union[InstrumentList, _Mapping]] = ..., my_watchlist: _Optional[bool] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., batch_options: _Optional[_Union[BatchOptions, _Mapping]] = ...) -> None: ...

class StreamTicksResponse(_message.Message):
    __slots__ = ("snapshot", "batch", "event", "heartbeat")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    snapshot: TickSnapshot
    batch: TickBatch
    event: StreamEvent
    heartbeat: Heartbeat
    def __init__(self, snapshot: _Optional[_Union[TickSnapshot, _Mapping]] = ..., batch: _Optional[_Union[TickBatch, _Mapping]] = ..., event: _Optional[_Union[StreamEvent, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class AddInstruments(_message.Message):
    __slots__ = ("keys", "mode")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    mode: _common_pb2.FeedMode
    def __init__(self, keys: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ...) -> None: ...

class RemoveInstruments(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ...) -> None: ...

class InteractiveStreamTicksRequest(_message.Message):
    __slots__ = ("correlation_id", "add", "remove", "batch_options")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    BATCH_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    add: AddInstruments
    remove: RemoveInstruments
    batch_options: BatchOptions
    def __init__(self, correlation_id: _Optional[str] = ..., add: _Optional[_Union[AddInstruments, _Mapping]] = ..., remove: _Optional[_Union[RemoveInstruments, _Mapping]] = ..., batch_options: _Optional[_Union[BatchOptions, _Mapping]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("correlation_id", "instruments", "message")
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    correlation_id: str
    instruments: _containers.RepeatedCompositeFieldContainer[InstrumentState]
    message: str
    def __init__(self, correlation_id: _Optional[str] = ..., instruments: _Optional[_Iterable[_Union[InstrumentState, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class InteractiveStreamTicksResponse(_message.Message):
    __slots__ = ("result", "snapshot", "batch", "event", "heartbeat")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    result: CommandResult
    snapshot: TickSnapshot
    batch: TickBatch
    event: StreamEvent
    heartbeat: Heartbeat
    def __init__(self, result: _Optional[_Union[CommandResult, _Mapping]] = ..., snapshot: _Optional[_Union[TickSnapshot, _Mapping]] = ..., batch: _Optional[_Union[TickBatch, _Mapping]] = ..., event: _Optional[_Union[StreamEvent, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("keys", "mode")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    mode: _common_pb2.FeedMode
    def __init__(self, keys: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ...) -> None: ...

class GetSnapshotResponse(_message.Message):
    __slots__ = ("ticks", "missing_keys", "stale")
    TICKS_FIELD_NUMBER: _ClassVar[int]
    MISSING_KEYS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    ticks: _containers.RepeatedCompositeFieldContainer[Tick]
    missing_keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    stale: _containers.RepeatedCompositeFieldContainer[InstrumentState]
    def __init__(self, ticks: _Optional[_Iterable[_Union[Tick, _Mapping]]] = ..., missing_keys: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ..., stale: _Optional[_Iterable[_Union[InstrumentState, _Mapping]]] = ...) -> None: ...

class SegmentMarketState(_message.Message):
    __slots__ = ("exchange_segment", "phase", "next_change_at", "next_phase")
    EXCHANGE_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHANGE_AT_FIELD_NUMBER: _ClassVar[int]
    NEXT_PHASE_FIELD_NUMBER: _ClassVar[int]
    exchange_segment: _common_pb2.ExchangeSegment
    phase: MarketPhase
    next_change_at: _timestamp_pb2.Timestamp
    next_phase: MarketPhase
    def __init__(self, exchange_segment: _Optional[_Union[_common_pb2.ExchangeSegment, str]] = ..., phase: _Optional[_Union[MarketPhase, str]] = ..., next_change_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_phase: _Optional[_Union[MarketPhase, str]] = ...) -> None: ...

class MarketPhaseChange(_message.Message):
    __slots__ = ("state", "previous_phase", "changed_at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_PHASE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    state: SegmentMarketState
    previous_phase: MarketPhase
    changed_at: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[SegmentMarketState, _Mapping]] = ..., previous_phase: _Optional[_Union[MarketPhase, str]] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetMarketStateRequest(_message.Message):
    __slots__ = ("exchange_segments",)
    EXCHANGE_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    exchange_segments: _containers.RepeatedScalarFieldContainer[_common_pb2.ExchangeSegment]
    def __init__(self, exchange_segments: _Optional[_Iterable[_Union[_common_pb2.ExchangeSegment, str]]] = ...) -> None: ...

class GetMarketStateResponse(_message.Message):
    __slots__ = ("segments", "as_of")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[SegmentMarketState]
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, segments: _Optional[_Iterable[_Union[SegmentMarketState, _Mapping]]] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("shard_id", "shard_epoch", "connection_state", "reachable", "reported_at", "last_disconnect_code", "last_disconnect_reason", "last_disconnect_at", "connected_at", "instruments_assigned", "instruments_subscribed", "instruments_awaiting_first_tick", "frames_received", "packets_received", "protocol_errors", "last_frame_at", "reconnect_count", "next_retry_at", "assignment_version", "interruption_cause", "interrupted_at")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_STATE_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECT_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECT_AT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_AWAITING_FIRST_TICK_FIELD_NUMBER: _ClassVar[int]
    FRAMES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_AT_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEXT_RETRY_AT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTION_CAUSE_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_AT_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    shard_epoch: str
    connection_state: ConnectionState
    reachable: bool
    reported_at: _timestamp_pb2.Timestamp
    last_disconnect_code: int
    last_disconnect_reason: str
    last_disconnect_at: _timestamp_pb2.Timestamp
    connected_at: _timestamp_pb2.Timestamp
    instruments_assigned: int
    instruments_subscribed: int
    instruments_awaiting_first_tick: int
    frames_received: int
    packets_received: int
    protocol_errors: int
    last_frame_at: _timestamp_pb2.Timestamp
    reconnect_count: int
    next_retry_at: _timestamp_pb2.Timestamp
    assignment_version: int
    interruption_cause: UpstreamCause
    interrupted_at: _timestamp_pb2.Timestamp
    def __init__(self, shard_id: _Optional[int] = ..., shard_epoch: _Optional[str] = ..., connection_state: _Optional[_Union[ConnectionState, str]] = ..., reachable: _Optional[bool] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_disconnect_code: _Optional[int] = ..., last_disconnect_reason: _Optional[str] = ..., last_disconnect_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., instruments_assigned: _Optional[int] = ..., instruments_subscribed: _Optional[int] = ..., instruments_awaiting_first_tick: _Optional[int] = ..., frames_received: _Optional[int] = ..., packets_received: _Optional[int] = ..., protocol_errors: _Optional[int] = ..., last_frame_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reconnect_count: _Optional[int] = ..., next_retry_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., assignment_version: _Optional[int] = ..., interruption_cause: _Optional[_Union[UpstreamCause, str]] = ..., interrupted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetShardStatusRequest(_message.Message):
    __slots__ = ("shard_id",)
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    def __init__(self, shard_id: _Optional[int] = ...) -> None: ...

class GetShardStatusResponse(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ...) -> None: ...

class StreamOptionChainRequest(_message.Message):
    __slots__ = ("underlying_symbol", "expiry_date", "strikes_each_side", "update_interval")
    UNDERLYING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    STRIKES_EACH_SIDE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    underlying_symbol: str
    expiry_date: str
    strikes_each_side: int
    update_interval: _duration_pb2.Duration
    def __init__(self, underlying_symbol: _Optional[str] = ..., expiry_date: _Optional[str] = ..., strikes_each_side: _Optional[int] = ..., update_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ChainOption(_message.Message):
    __slots__ = ("key", "last_price", "change", "bid_price", "ask_price", "volume", "open_interest", "open_interest_change", "greeks_status", "implied_volatility", "delta", "gamma", "theta", "vega", "stale", "stale_reason")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_PRICE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    BID_PRICE_FIELD_NUMBER: _ClassVar[int]
    ASK_PRICE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    OPEN_INTEREST_CHANGE_FIELD_NUMBER: _ClassVar[int]
    GREEKS_STATUS_FIELD_NUMBER: _ClassVar[int]
    IMPLIED_VOLATILITY_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    THETA_FIELD_NUMBER: _ClassVar[int]
    VEGA_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    STALE_REASON_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    last_price: float
    change: float
    bid_price: float
    ask_price: float
    volume: int
    open_interest: int
    open_interest_change: int
    greeks_status: GreeksStatus
    implied_volatility: float
    delta: float
    gamma: float
    theta: float
    vega: float
    stale: bool
    stale_reason: str
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., last_price: _Optional[float] = ..., change: _Optional[float] = ..., bid_price: _Optional[float] = ..., ask_price: _Optional[float] = ..., volume: _Optional[int] = ..., open_interest: _Optional[int] = ..., open_interest_change: _Optional[int] = ..., greeks_status: _Optional[_Union[GreeksStatus, str]] = ..., implied_volatility: _Optional[float] = ..., delta: _Optional[float] = ..., gamma: _Optional[float] = ..., theta: _Optional[float] = ..., vega: _Optional[float] = ..., stale: _Optional[bool] = ..., stale_reason: _Optional[str] = ...) -> None: ...

class OptionChainRow(_message.Message):
    __slots__ = ("strike_price", "call", "put")
    STRIKE_PRICE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    strike_price: float
    call: ChainOption
    put: ChainOption
    def __init__(self, strike_price: _Optional[float] = ..., call: _Optional[_Union[ChainOption, _Mapping]] = ..., put: _Optional[_Union[ChainOption, _Mapping]] = ...) -> None: ...

class OptionChainUpdate(_message.Message):
    __slots__ = ("underlying", "expiry_date", "underlying_price", "atm_strike", "put_call_ratio", "forward_price", "forward_source", "years_to_expiry", "rate", "rows", "as_of", "future")
    UNDERLYING_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_PRICE_FIELD_NUMBER: _ClassVar[int]
    ATM_STRIKE_FIELD_NUMBER: _ClassVar[int]
    PUT_CALL_RATIO_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PRICE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    YEARS_TO_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    FUTURE_FIELD_NUMBER: _ClassVar[int]
    underlying: _common_pb2.InstrumentKey
    expiry_date: str
    underlying_price: float
    atm_strike: float
    put_call_ratio: float
    forward_price: float
    forward_source: ForwardSource
    years_to_expiry: float
    rate: float
    rows: _containers.RepeatedCompositeFieldContainer[OptionChainRow]
    as_of: _timestamp_pb2.Timestamp
    future: _common_pb2.InstrumentKey
    def __init__(self, underlying: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., expiry_date: _Optional[str] = ..., underlying_price: _Optional[float] = ..., atm_strike: _Optional[float] = ..., put_call_ratio: _Optional[float] = ..., forward_price: _Optional[float] = ..., forward_source: _Optional[_Union[ForwardSource, str]] = ..., years_to_expiry: _Optional[float] = ..., rate: _Optional[float] = ..., rows: _Optional[_Iterable[_Union[OptionChainRow, _Mapping]]] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., future: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ...) -> None: ...

class StreamOptionChainResponse(_message.Message):
    __slots__ = ("update",)
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    update: OptionChainUpdate
    def __init__(self, update: _Optional[_Union[OptionChainUpdate, _Mapping]] = ...) -> None: ...
