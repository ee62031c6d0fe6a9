import datetime

from dataserver.common.v1 import common_pb2 as _common_pb2
from dataserver.registry.v1 import registry_pb2 as _registry_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_A: _ClassVar[Tier]
    TIER_B: _ClassVar[Tier]

class WatchlistItemState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCHLIST_ITEM_STATE_UNSPECIFIED: _ClassVar[WatchlistItemState]
    WATCHLIST_ITEM_STATE_ACTIVE: _ClassVar[WatchlistItemState]
    WATCHLIST_ITEM_STATE_EVICTED: _ClassVar[WatchlistItemState]

class EvictionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVICTION_REASON_UNSPECIFIED: _ClassVar[EvictionReason]
    EVICTION_REASON_CAPACITY: _ClassVar[EvictionReason]
    EVICTION_REASON_TIER_B_PLAN: _ClassVar[EvictionReason]
    EVICTION_REASON_RECENTER: _ClassVar[EvictionReason]
    EVICTION_REASON_END_OF_DAY: _ClassVar[EvictionReason]
    EVICTION_REASON_ADMIN: _ClassVar[EvictionReason]
    EVICTION_REASON_EXPIRED: _ClassVar[EvictionReason]

class AuditAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_ACTION_UNSPECIFIED: _ClassVar[AuditAction]
    AUDIT_ACTION_SUBSCRIBE: _ClassVar[AuditAction]
    AUDIT_ACTION_UNSUBSCRIBE: _ClassVar[AuditAction]
    AUDIT_ACTION_EVICT: _ClassVar[AuditAction]
    AUDIT_ACTION_MOVE: _ClassVar[AuditAction]
    AUDIT_ACTION_RECENTER: _ClassVar[AuditAction]
    AUDIT_ACTION_MODE_CHANGE: _ClassVar[AuditAction]

class AssignmentMessageKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSIGNMENT_MESSAGE_KIND_UNSPECIFIED: _ClassVar[AssignmentMessageKind]
    ASSIGNMENT_MESSAGE_KIND_SNAPSHOT: _ClassVar[AssignmentMessageKind]
    ASSIGNMENT_MESSAGE_KIND_CHANGES: _ClassVar[AssignmentMessageKind]
    ASSIGNMENT_MESSAGE_KIND_HEARTBEAT: _ClassVar[AssignmentMessageKind]

class WatchlistEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCHLIST_EVENT_KIND_UNSPECIFIED: _ClassVar[WatchlistEventKind]
    WATCHLIST_EVENT_KIND_ADDED: _ClassVar[WatchlistEventKind]
    WATCHLIST_EVENT_KIND_REMOVED: _ClassVar[WatchlistEventKind]
    WATCHLIST_EVENT_KIND_EVICTED: _ClassVar[WatchlistEventKind]
    WATCHLIST_EVENT_KIND_RECENTERED: _ClassVar[WatchlistEventKind]
TIER_UNSPECIFIED: Tier
TIER_A: Tier
TIER_B: Tier
WATCHLIST_ITEM_STATE_UNSPECIFIED: WatchlistItemState
WATCHLIST_ITEM_STATE_ACTIVE: WatchlistItemState
WATCHLIST_ITEM_STATE_EVICTED: WatchlistItemState
EVICTION_REASON_UNSPECIFIED: EvictionReason
EVICTION_REASON_CAPACITY: EvictionReason
EVICTION_REASON_TIER_B_PLAN: EvictionReason
EVICTION_REASON_RECENTER: EvictionReason
EVICTION_REASON_END_OF_DAY: EvictionReason
EVICTION_REASON_ADMIN: EvictionReason
EVICTION_REASON_EXPIRED: EvictionReason
AUDIT_ACTION_UNSPECIFIED: AuditAction
AUDIT_ACTION_SUBSCRIBE: AuditAction
AUDIT_ACTION_UNSUBSCRIBE: AuditAction
AUDIT_ACTION_EVICT: AuditAction
AUDIT_ACTION_MOVE: AuditAction
AUDIT_ACTION_RECENTER: AuditAction
AUDIT_ACTION_MODE_CHANGE: AuditAction
ASSIGNMENT_MESSAGE_KIND_UNSPECIFIED: AssignmentMessageKind
ASSIGNMENT_MESSAGE_KIND_SNAPSHOT: AssignmentMessageKind
ASSIGNMENT_MESSAGE_KIND_CHANGES: AssignmentMessageKind
ASSIGNMENT_MESSAGE_KIND_HEARTBEAT: AssignmentMessageKind
WATCHLIST_EVENT_KIND_UNSPECIFIED: WatchlistEventKind
WATCHLIST_EVENT_KIND_ADDED: WatchlistEventKind
WATCHLIST_EVENT_KIND_REMOVED: WatchlistEventKind
WATCHLIST_EVENT_KIND_EVICTED: WatchlistEventKind
WATCHLIST_EVENT_KIND_RECENTERED: WatchlistEventKind

class WatchlistItem(_message.Message):
    __slots__ = ("item_id", "user_id", "symbol", "state", "underlying", "expiry_date", "atm_strike", "strikes_each_side", "instrument_count", "mode", "underlying_price", "price_source", "created_at", "last_used_at", "evicted_at", "eviction_reason", "eviction_message", "instruments")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    ATM_STRIKE_FIELD_NUMBER: _ClassVar[int]
    STRIKES_EACH_SIDE_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_PRICE_FIELD_NUMBER: _ClassVar[int]
    PRICE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    EVICTED_AT_FIELD_NUMBER: _ClassVar[int]
    EVICTION_REASON_FIELD_NUMBER: _ClassVar[int]
    EVICTION_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    user_id: str
    symbol: str
    state: WatchlistItemState
    underlying: _common_pb2.InstrumentKey
    expiry_date: str
    atm_strike: float
    strikes_each_side: int
    instrument_count: int
    mode: _common_pb2.FeedMode
    underlying_price: float
    price_source: _registry_pb2.PriceSource
    created_at: _timestamp_pb2.Timestamp
    last_used_at: _timestamp_pb2.Timestamp
    evicted_at: _timestamp_pb2.Timestamp
    eviction_reason: EvictionReason
    eviction_message: str
    instruments: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    def __init__(self, item_id: _Optional[str] = ..., user_id: _Optional[str] = ..., symbol: _Optional[str] = ..., state: _Optional[_Union[WatchlistItemState, str]] = ..., underlying: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., expiry_date: _Optional[str] = ..., atm_strike: _Optional[float] = ..., strikes_each_side: _Optional[int] = ..., instrument_count: _Optional[int] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., underlying_price: _Optional[float] = ..., price_source: _Optional[_Union[_registry_pb2.PriceSource, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., evicted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., eviction_reason: _Optional[_Union[EvictionReason, str]] = ..., eviction_message: _Optional[str] = ..., instruments: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ...) -> None: ...

class EvictedUnit(_message.Message):
    __slots__ = ("item_id", "user_id", "symbol", "expiry_date", "reason", "message", "instruments_released", "last_used_at")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_RELEASED_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    user_id: str
    symbol: str
    expiry_date: str
    reason: EvictionReason
    message: str
    instruments_released: int
    last_used_at: _timestamp_pb2.Timestamp
    def __init__(self, item_id: _Optional[str] = ..., user_id: _Optional[str] = ..., symbol: _Optional[str] = ..., expiry_date: _Optional[str] = ..., reason: _Optional[_Union[EvictionReason, str]] = ..., message: _Optional[str] = ..., instruments_released: _Optional[int] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddWatchlistItemRequest(_message.Message):
    __slots__ = ("symbol", "expiry_date", "strikes_each_side", "underlying_price", "underlying_only", "mode", "user_id")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    STRIKES_EACH_SIDE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_PRICE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_ONLY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    expiry_date: str
    strikes_each_side: int
    underlying_price: float
    underlying_only: bool
    mode: _common_pb2.FeedMode
    user_id: str
    def __init__(self, symbol: _Optional[str] = ..., expiry_date: _Optional[str] = ..., strikes_each_side: _Optional[int] = ..., underlying_price: _Optional[float] = ..., underlying_only: _Optional[bool] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., user_id: _Optional[str] = ...) -> None: ...

class AddWatchlistItemResponse(_message.Message):
    __slots__ = ("watchlist_item", "created", "evictions")
    WATCHLIST_ITEM_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    watchlist_item: WatchlistItem
    created: bool
    evictions: _containers.RepeatedCompositeFieldContainer[EvictedUnit]
    def __init__(self, watchlist_item: _Optional[_Union[WatchlistItem, _Mapping]] = ..., created: _Optional[bool] = ..., evictions: _Optional[_Iterable[_Union[EvictedUnit, _Mapping]]] = ...) -> None: ...

class RemoveWatchlistItemRequest(_message.Message):
    __slots__ = ("item_id", "user_id")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    user_id: str
    def __init__(self, item_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class RemoveWatchlistItemResponse(_message.Message):
    __slots__ = ("instruments_released",)
    INSTRUMENTS_RELEASED_FIELD_NUMBER: _ClassVar[int]
    instruments_released: int
    def __init__(self, instruments_released: _Optional[int] = ...) -> None: ...

class ListWatchlistItemsRequest(_message.Message):
    __slots__ = ("user_id", "state", "include_instruments", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    state: WatchlistItemState
    include_instruments: bool
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., state: _Optional[_Union[WatchlistItemState, str]] = ..., include_instruments: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListWatchlistItemsResponse(_message.Message):
    __slots__ = ("watchlist_items", "next_page_token", "total_size")
    WATCHLIST_ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    watchlist_items: _containers.RepeatedCompositeFieldContainer[WatchlistItem]
    next_page_token: str
    total_size: int
    def __init__(self, watchlist_items: _Optional[_Iterable[_Union[WatchlistItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("user_id", "keys", "item_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    keys: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("units_touched",)
    UNITS_TOUCHED_FIELD_NUMBER: _ClassVar[int]
    units_touched: int
    def __init__(self, units_touched: _Optional[int] = ...) -> None: ...

class GetSubscriptionStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierUsage(_message.Message):
    __slots__ = ("tier", "instrument_count", "owner_count")
    TIER_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    OWNER_COUNT_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    instrument_count: int
    owner_count: int
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., instrument_count: _Optional[int] = ..., owner_count: _Optional[int] = ...) -> None: ...

class ShardUsage(_message.Message):
    __slots__ = ("shard_id", "instrument_count", "limit", "moves_in_flight", "tier_a_count", "tier_b_count", "connected", "down_since", "down_reason", "account_id", "connection_index")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MOVES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    TIER_A_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIER_B_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    DOWN_SINCE_FIELD_NUMBER: _ClassVar[int]
    DOWN_REASON_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_INDEX_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    instrument_count: int
    limit: int
    moves_in_flight: int
    tier_a_count: int
    tier_b_count: int
    connected: bool
    down_since: _timestamp_pb2.Timestamp
    down_reason: str
    account_id: str
    connection_index: int
    def __init__(self, shard_id: _Optional[int] = ..., instrument_count: _Optional[int] = ..., limit: _Optional[int] = ..., moves_in_flight: _Optional[int] = ..., tier_a_count: _Optional[int] = ..., tier_b_count: _Optional[int] = ..., connected: _Optional[bool] = ..., down_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., down_reason: _Optional[str] = ..., account_id: _Optional[str] = ..., connection_index: _Optional[int] = ...) -> None: ...

class UserUsage(_message.Message):
    __slots__ = ("user_id", "active_item_count", "evicted_item_count", "instrument_count")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    EVICTED_ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    active_item_count: int
    evicted_item_count: int
    instrument_count: int
    def __init__(self, user_id: _Optional[str] = ..., active_item_count: _Optional[int] = ..., evicted_item_count: _Optional[int] = ..., instrument_count: _Optional[int] = ...) -> None: ...

class GetSubscriptionStatusResponse(_message.Message):
    __slots__ = ("subscribed_count", "capacity", "connection_count", "per_connection_limit", "utilization", "tiers", "shards", "users", "user_count", "evictions_today", "as_of", "accounts")
    SUBSCRIBED_COUNT_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    PER_CONNECTION_LIMIT_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    USER_COUNT_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_TODAY_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    subscribed_count: int
    capacity: int
    connection_count: int
    per_connection_limit: int
    utilization: float
    tiers: _containers.RepeatedCompositeFieldContainer[TierUsage]
    shards: _containers.RepeatedCompositeFieldContainer[ShardUsage]
    users: _containers.RepeatedCompositeFieldContainer[UserUsage]
    user_count: int
    evictions_today: int
    as_of: _timestamp_pb2.Timestamp
    accounts: _containers.RepeatedCompositeFieldContainer[AccountUsage]
    def __init__(self, subscribed_count: _Optional[int] = ..., capacity: _Optional[int] = ..., connection_count: _Optional[int] = ..., per_connection_limit: _Optional[int] = ..., utilization: _Optional[float] = ..., tiers: _Optional[_Iterable[_Union[TierUsage, _Mapping]]] = ..., shards: _Optional[_Iterable[_Union[ShardUsage, _Mapping]]] = ..., users: _Optional[_Iterable[_Union[UserUsage, _Mapping]]] = ..., user_count: _Optional[int] = ..., evictions_today: _Optional[int] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accounts: _Optional[_Iterable[_Union[AccountUsage, _Mapping]]] = ...) -> None: ...

class AccountUsage(_message.Message):
    __slots__ = ("account_id", "connection_count", "capacity", "subscribed_count", "utilization", "connected_shards", "credentials_version", "rotated_at")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROTATED_AT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    connection_count: int
    capacity: int
    subscribed_count: int
    utilization: float
    connected_shards: int
    credentials_version: int
    rotated_at: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., connection_count: _Optional[int] = ..., capacity: _Optional[int] = ..., subscribed_count: _Optional[int] = ..., utilization: _Optional[float] = ..., connected_shards: _Optional[int] = ..., credentials_version: _Optional[int] = ..., rotated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubscriptionOwner(_message.Message):
    __slots__ = ("tier", "user_id", "item_id", "plan_entry_id", "mode", "created_at")
    TIER_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    user_id: str
    item_id: str
    plan_entry_id: str
    mode: _common_pb2.FeedMode
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., plan_entry_id: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Subscription(_message.Message):
    __slots__ = ("key", "trading_symbol", "mode", "shard_id", "moving_to_shard_id", "ref_count", "owners", "tier", "subscribed_at", "last_used_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TRADING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    MOVING_TO_SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    REF_COUNT_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    trading_symbol: str
    mode: _common_pb2.FeedMode
    shard_id: int
    moving_to_shard_id: int
    ref_count: int
    owners: _containers.RepeatedCompositeFieldContainer[SubscriptionOwner]
    tier: Tier
    subscribed_at: _timestamp_pb2.Timestamp
    last_used_at: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., trading_symbol: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., shard_id: _Optional[int] = ..., moving_to_shard_id: _Optional[int] = ..., ref_count: _Optional[int] = ..., owners: _Optional[_Iterable[_Union[SubscriptionOwner, _Mapping]]] = ..., tier: _Optional[_Union[Tier, str]] = ..., subscribed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSubscriptionsRequest(_message.Message):
    __slots__ = ("tier", "shard_id", "user_id", "page_size", "page_token")
    TIER_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    shard_id: int
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., shard_id: _Optional[int] = ..., user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSubscriptionsResponse(_message.Message):
    __slots__ = ("subscriptions", "next_page_token", "total_size")
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[Subscription]
    next_page_token: str
    total_size: int
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[Subscription, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("entry_id", "occurred_at", "action", "actor", "reason", "key", "tier", "item_id", "user_id", "plan_entry_id", "from_shard_id", "to_shard_id", "old_mode", "new_mode", "old_atm_strike", "new_atm_strike")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    TO_SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_MODE_FIELD_NUMBER: _ClassVar[int]
    NEW_MODE_FIELD_NUMBER: _ClassVar[int]
    OLD_ATM_STRIKE_FIELD_NUMBER: _ClassVar[int]
    NEW_ATM_STRIKE_FIELD_NUMBER: _ClassVar[int]
    entry_id: int
    occurred_at: _timestamp_pb2.Timestamp
    action: AuditAction
    actor: str
    reason: str
    key: _common_pb2.InstrumentKey
    tier: Tier
    item_id: str
    user_id: str
    plan_entry_id: str
    from_shard_id: int
    to_shard_id: int
    old_mode: _common_pb2.FeedMode
    new_mode: _common_pb2.FeedMode
    old_atm_strike: float
    new_atm_strike: float
    def __init__(self, entry_id: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., action: _Optional[_Union[AuditAction, str]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., tier: _Optional[_Union[Tier, str]] = ..., item_id: _Optional[str] = ..., user_id: _Optional[str] = ..., plan_entry_id: _Optional[str] = ..., from_shard_id: _Optional[int] = ..., to_shard_id: _Optional[int] = ..., old_mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., new_mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., old_atm_strike: _Optional[float] = ..., new_atm_strike: _Optional[float] = ...) -> None: ...

class GetSubscriptionRequest(_message.Message):
    __slots__ = ("key", "history_limit")
    KEY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    history_limit: int
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., history_limit: _Optional[int] = ...) -> None: ...

class GetSubscriptionResponse(_message.Message):
    __slots__ = ("subscription", "history")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    history: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ..., history: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class ListAuditEntriesRequest(_message.Message):
    __slots__ = ("key", "action", "tier", "user_id", "item_id", "start_time", "end_time", "page_size", "page_token")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    action: AuditAction
    tier: Tier
    user_id: str
    item_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., action: _Optional[_Union[AuditAction, str]] = ..., tier: _Optional[_Union[Tier, str]] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditEntriesResponse(_message.Message):
    __slots__ = ("audit_entries", "next_page_token")
    AUDIT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    audit_entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_page_token: str
    def __init__(self, audit_entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExpiryDateList(_message.Message):
    __slots__ = ("expiry_dates",)
    EXPIRY_DATES_FIELD_NUMBER: _ClassVar[int]
    expiry_dates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, expiry_dates: _Optional[_Iterable[str]] = ...) -> None: ...

class TierBChain(_message.Message):
    __slots__ = ("underlying_symbol", "expiry_dates", "nearest_expiries", "strikes_each_side", "include_underlying", "mode", "nearest_futures")
    UNDERLYING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATES_FIELD_NUMBER: _ClassVar[int]
    NEAREST_EXPIRIES_FIELD_NUMBER: _ClassVar[int]
    STRIKES_EACH_SIDE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_UNDERLYING_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NEAREST_FUTURES_FIELD_NUMBER: _ClassVar[int]
    underlying_symbol: str
    expiry_dates: ExpiryDateList
    nearest_expiries: int
    strikes_each_side: int
    include_underlying: bool
    mode: _common_pb2.FeedMode
    nearest_futures: int
    def __init__(self, underlying_symbol: _Optional[str] = ..., expiry_dates: _Optional[_Union[ExpiryDateList, _Mapping]] = ..., nearest_expiries: _Optional[int] = ..., strikes_each_side: _Optional[int] = ..., include_underlying: _Optional[bool] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., nearest_futures: _Optional[int] = ...) -> None: ...

class TierBInstrument(_message.Message):
    __slots__ = ("key", "mode")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    mode: _common_pb2.FeedMode
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ...) -> None: ...

class ResolvedChain(_message.Message):
    __slots__ = ("plan_entry_id", "underlying_symbol", "underlying", "expiry_date", "atm_strike", "strikes_each_side", "instrument_count")
    PLAN_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    ATM_STRIKE_FIELD_NUMBER: _ClassVar[int]
    STRIKES_EACH_SIDE_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    plan_entry_id: str
    underlying_symbol: str
    underlying: _common_pb2.InstrumentKey
    expiry_date: str
    atm_strike: float
    strikes_each_side: int
    instrument_count: int
    def __init__(self, plan_entry_id: _Optional[str] = ..., underlying_symbol: _Optional[str] = ..., underlying: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., expiry_date: _Optional[str] = ..., atm_strike: _Optional[float] = ..., strikes_each_side: _Optional[int] = ..., instrument_count: _Optional[int] = ...) -> None: ...

class SetTierBPlanRequest(_message.Message):
    __slots__ = ("chains", "instruments", "dry_run")
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    chains: _containers.RepeatedCompositeFieldContainer[TierBChain]
    instruments: _containers.RepeatedCompositeFieldContainer[TierBInstrument]
    dry_run: bool
    def __init__(self, chains: _Optional[_Iterable[_Union[TierBChain, _Mapping]]] = ..., instruments: _Optional[_Iterable[_Union[TierBInstrument, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class SetTierBPlanResponse(_message.Message):
    __slots__ = ("instruments_added", "instruments_removed", "instruments_kept", "evictions", "chains", "instrument_count")
    INSTRUMENTS_ADDED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_KEPT_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    instruments_added: int
    instruments_removed: int
    instruments_kept: int
    evictions: _containers.RepeatedCompositeFieldContainer[EvictedUnit]
    chains: _containers.RepeatedCompositeFieldContainer[ResolvedChain]
    instrument_count: int
    def __init__(self, instruments_added: _Optional[int] = ..., instruments_removed: _Optional[int] = ..., instruments_kept: _Optional[int] = ..., evictions: _Optional[_Iterable[_Union[EvictedUnit, _Mapping]]] = ..., chains: _Optional[_Iterable[_Union[ResolvedChain, _Mapping]]] = ..., instrument_count: _Optional[int] = ...) -> None: ...

class GetTierBPlanRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTierBPlanResponse(_message.Message):
    __slots__ = ("chains", "instruments", "resolved_chains", "instrument_count", "updated_at")
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_CHAINS_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    chains: _containers.RepeatedCompositeFieldContainer[TierBChain]
    instruments: _containers.RepeatedCompositeFieldContainer[TierBInstrument]
    resolved_chains: _containers.RepeatedCompositeFieldContainer[ResolvedChain]
    instrument_count: int
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, chains: _Optional[_Iterable[_Union[TierBChain, _Mapping]]] = ..., instruments: _Optional[_Iterable[_Union[TierBInstrument, _Mapping]]] = ..., resolved_chains: _Optional[_Iterable[_Union[ResolvedChain, _Mapping]]] = ..., instrument_count: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TierBChainRef(_message.Message):
    __slots__ = ("underlying_symbol", "expiry_date")
    UNDERLYING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    underlying_symbol: str
    expiry_date: str
    def __init__(self, underlying_symbol: _Optional[str] = ..., expiry_date: _Optional[str] = ...) -> None: ...

class RecenterChainRequest(_message.Message):
    __slots__ = ("item_id", "tier_b_chain", "underlying_price", "use_last_price", "hysteresis_strikes")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_B_CHAIN_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_PRICE_FIELD_NUMBER: _ClassVar[int]
    USE_LAST_PRICE_FIELD_NUMBER: _ClassVar[int]
    HYSTERESIS_STRIKES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    tier_b_chain: TierBChainRef
    underlying_price: float
    use_last_price: bool
    hysteresis_strikes: float
    def __init__(self, item_id: _Optional[str] = ..., tier_b_chain: _Optional[_Union[TierBChainRef, _Mapping]] = ..., underlying_price: _Optional[float] = ..., use_last_price: _Optional[bool] = ..., hysteresis_strikes: _Optional[float] = ...) -> None: ...

class RecenterResult(_message.Message):
    __slots__ = ("item_id", "plan_entry_id", "underlying_symbol", "expiry_date", "underlying_price", "price_source", "old_atm_strike", "new_atm_strike", "moved", "instruments_added", "instruments_removed")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_PRICE_FIELD_NUMBER: _ClassVar[int]
    PRICE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    OLD_ATM_STRIKE_FIELD_NUMBER: _ClassVar[int]
    NEW_ATM_STRIKE_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_ADDED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    plan_entry_id: str
    underlying_symbol: str
    expiry_date: str
    underlying_price: float
    price_source: _registry_pb2.PriceSource
    old_atm_strike: float
    new_atm_strike: float
    moved: bool
    instruments_added: int
    instruments_removed: int
    def __init__(self, item_id: _Optional[str] = ..., plan_entry_id: _Optional[str] = ..., underlying_symbol: _Optional[str] = ..., expiry_date: _Optional[str] = ..., underlying_price: _Optional[float] = ..., price_source: _Optional[_Union[_registry_pb2.PriceSource, str]] = ..., old_atm_strike: _Optional[float] = ..., new_atm_strike: _Optional[float] = ..., moved: _Optional[bool] = ..., instruments_added: _Optional[int] = ..., instruments_removed: _Optional[int] = ...) -> None: ...

class RecenterChainResponse(_message.Message):
    __slots__ = ("result", "evictions")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    result: RecenterResult
    evictions: _containers.RepeatedCompositeFieldContainer[EvictedUnit]
    def __init__(self, result: _Optional[_Union[RecenterResult, _Mapping]] = ..., evictions: _Optional[_Iterable[_Union[EvictedUnit, _Mapping]]] = ...) -> None: ...

class RecenterAllChainsRequest(_message.Message):
    __slots__ = ("tier", "hysteresis_strikes")
    TIER_FIELD_NUMBER: _ClassVar[int]
    HYSTERESIS_STRIKES_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    hysteresis_strikes: float
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., hysteresis_strikes: _Optional[float] = ...) -> None: ...

class RecenterAllChainsResponse(_message.Message):
    __slots__ = ("chains_checked", "chains_moved", "moved", "evictions", "chains_skipped")
    class ChainsSkippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CHAINS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHAINS_MOVED_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    CHAINS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    chains_checked: int
    chains_moved: int
    moved: _containers.RepeatedCompositeFieldContainer[RecenterResult]
    evictions: _containers.RepeatedCompositeFieldContainer[EvictedUnit]
    chains_skipped: _containers.ScalarMap[str, int]
    def __init__(self, chains_checked: _Optional[int] = ..., chains_moved: _Optional[int] = ..., moved: _Optional[_Iterable[_Union[RecenterResult, _Mapping]]] = ..., evictions: _Optional[_Iterable[_Union[EvictedUnit, _Mapping]]] = ..., chains_skipped: _Optional[_Mapping[str, int]] = ...) -> None: ...

class EndOfDayRequest(_message.Message):
    __slots__ = ("trading_date", "keep_watchlist_items", "force")
    TRADING_DATE_FIELD_NUMBER: _ClassVar[int]
    KEEP_WATCHLIST_ITEMS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    trading_date: str
    keep_watchlist_items: bool
    force: bool
    def __init__(self, trading_date: _Optional[str] = ..., keep_watchlist_items: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class ReleaseExpiredRequest(_message.Message):
    __slots__ = ("trading_date",)
    TRADING_DATE_FIELD_NUMBER: _ClassVar[int]
    trading_date: str
    def __init__(self, trading_date: _Optional[str] = ...) -> None: ...

class ReleaseExpiredResponse(_message.Message):
    __slots__ = ("trading_date", "units_evicted", "chains_removed", "instruments_unsubscribed")
    TRADING_DATE_FIELD_NUMBER: _ClassVar[int]
    UNITS_EVICTED_FIELD_NUMBER: _ClassVar[int]
    CHAINS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    trading_date: str
    units_evicted: int
    chains_removed: int
    instruments_unsubscribed: int
    def __init__(self, trading_date: _Optional[str] = ..., units_evicted: _Optional[int] = ..., chains_removed: _Optional[int] = ..., instruments_unsubscribed: _Optional[int] = ...) -> None: ...

class EndOfDayResponse(_message.Message):
    __slots__ = ("trading_date", "already_done", "units_unsubscribed", "instruments_unsubscribed", "items_deleted", "users_affected")
    TRADING_DATE_FIELD_NUMBER: _ClassVar[int]
    ALREADY_DONE_FIELD_NUMBER: _ClassVar[int]
    UNITS_UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_DELETED_FIELD_NUMBER: _ClassVar[int]
    USERS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    trading_date: str
    already_done: bool
    units_unsubscribed: int
    instruments_unsubscribed: int
    items_deleted: int
    users_affected: int
    def __init__(self, trading_date: _Optional[str] = ..., already_done: _Optional[bool] = ..., units_unsubscribed: _Optional[int] = ..., instruments_unsubscribed: _Optional[int] = ..., items_deleted: _Optional[int] = ..., users_affected: _Optional[int] = ...) -> None: ...

class UnsubscribeAllTierARequest(_message.Message):
    __slots__ = ("user_id", "reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    reason: str
    def __init__(self, user_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UnsubscribeAllTierAResponse(_message.Message):
    __slots__ = ("units_unsubscribed", "instruments_unsubscribed", "users_affected")
    UNITS_UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    USERS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    units_unsubscribed: int
    instruments_unsubscribed: int
    users_affected: int
    def __init__(self, units_unsubscribed: _Optional[int] = ..., instruments_unsubscribed: _Optional[int] = ..., users_affected: _Optional[int] = ...) -> None: ...

class ClearWatchlistsRequest(_message.Message):
    __slots__ = ("user_id", "all_users")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    all_users: bool
    def __init__(self, user_id: _Optional[str] = ..., all_users: _Optional[bool] = ...) -> None: ...

class ClearWatchlistsResponse(_message.Message):
    __slots__ = ("items_deleted", "instruments_unsubscribed", "users_affected")
    ITEMS_DELETED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    USERS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    items_deleted: int
    instruments_unsubscribed: int
    users_affected: int
    def __init__(self, items_deleted: _Optional[int] = ..., instruments_unsubscribed: _Optional[int] = ..., users_affected: _Optional[int] = ...) -> None: ...

class ShardMove(_message.Message):
    __slots__ = ("key", "from_shard_id", "to_shard_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FROM_SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    TO_SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    from_shard_id: int
    to_shard_id: int
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., from_shard_id: _Optional[int] = ..., to_shard_id: _Optional[int] = ...) -> None: ...

class RebalanceRequest(_message.Message):
    __slots__ = ("dry_run", "max_moves")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    MAX_MOVES_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    max_moves: int
    def __init__(self, dry_run: _Optional[bool] = ..., max_moves: _Optional[int] = ...) -> None: ...

class RebalanceResponse(_message.Message):
    __slots__ = ("moves", "spread_before", "spread_after")
    MOVES_FIELD_NUMBER: _ClassVar[int]
    SPREAD_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SPREAD_AFTER_FIELD_NUMBER: _ClassVar[int]
    moves: _containers.RepeatedCompositeFieldContainer[ShardMove]
    spread_before: int
    spread_after: int
    def __init__(self, moves: _Optional[_Iterable[_Union[ShardMove, _Mapping]]] = ..., spread_before: _Optional[int] = ..., spread_after: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("key", "mode", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    mode: _common_pb2.FeedMode
    version: int
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., version: _Optional[int] = ...) -> None: ...

class WatchAssignmentsRequest(_message.Message):
    __slots__ = ("shard_id", "watcher_id")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    WATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    watcher_id: str
    def __init__(self, shard_id: _Optional[int] = ..., watcher_id: _Optional[str] = ...) -> None: ...

class WatchAssignmentsResponse(_message.Message):
    __slots__ = ("kind", "version", "shard_id", "shard_limit", "assignments", "added", "updated", "removed", "sent_at")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_LIMIT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    kind: AssignmentMessageKind
    version: int
    shard_id: int
    shard_limit: int
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    added: _containers.RepeatedCompositeFieldContainer[Assignment]
    updated: _containers.RepeatedCompositeFieldContainer[Assignment]
    removed: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[_Union[AssignmentMessageKind, str]] = ..., version: _Optional[int] = ..., shard_id: _Optional[int] = ..., shard_limit: _Optional[int] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., added: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., updated: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchlistEvent(_message.Message):
    __slots__ = ("kind", "watchlist_item", "instruments_added", "instruments_removed", "occurred_at")
    KIND_FIELD_NUMBER: _ClassVar[int]
    WATCHLIST_ITEM_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_ADDED_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    kind: WatchlistEventKind
    watchlist_item: WatchlistItem
    instruments_added: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    instruments_removed: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[_Union[WatchlistEventKind, str]] = ..., watchlist_item: _Optional[_Union[WatchlistItem, _Mapping]] = ..., instruments_added: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ..., instruments_removed: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchlistSnapshot(_message.Message):
    __slots__ = ("watchlist_items",)
    WATCHLIST_ITEMS_FIELD_NUMBER: _ClassVar[int]
    watchlist_items: _containers.RepeatedCompositeFieldContainer[WatchlistItem]
    def __init__(self, watchlist_items: _Optional[_Iterable[_Union[WatchlistItem, _Mapping]]] = ...) -> None: ...

class WatchWatchlistEventsRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class WatchWatchlistEventsResponse(_message.Message):
    __slots__ = ("snapshot", "event", "heartbeat")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    snapshot: WatchlistSnapshot
    event: WatchlistEvent
    heartbeat: _timestamp_pb2.Timestamp
    def __init__(self, snapshot: _Optional[_Union[WatchlistSnapshot, _Mapping]] = ..., event: _Optional[_Union[WatchlistEvent, _Mapping]] = ..., heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportShardHealthRequest(_message.Message):
    __slots__ = ("shard_id", "shard_epoch", "connected", "down_since", "reason", "account_id", "credentials_version", "waiting_for_credentials")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    DOWN_SINCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    shard_epoch: str
    connected: bool
    down_since: _timestamp_pb2.Timestamp
    reason: str
    account_id: str
    credentials_version: int
    waiting_for_credentials: bool
    def __init__(self, shard_id: _Optional[int] = ..., shard_epoch: _Optional[str] = ..., connected: _Optional[bool] = ..., down_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., account_id: _Optional[str] = ..., credentials_version: _Optional[int] = ..., waiting_for_credentials: _Optional[bool] = ...) -> None: ...

class ReportShardHealthResponse(_message.Message):
    __slots__ = ("report_interval", "credentials_version")
    REPORT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_VERSION_FIELD_NUMBER: _ClassVar[int]
    report_interval: _duration_pb2.Duration
    credentials_version: int
    def __init__(self, report_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., credentials_version: _Optional[int] = ...) -> None: ...

class RotateAccessTokenRequest(_message.Message):
    __slots__ = ("account_id", "access_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    access_token: str
    def __init__(self, account_id: _Optional[str] = ..., access_token: _Optional[str] = ...) -> None: ...

class RotateAccessTokenResponse(_message.Message):
    __slots__ = ("account_id", "credentials_version", "rotated_at")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROTATED_AT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    credentials_version: int
    rotated_at: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., credentials_version: _Optional[int] = ..., rotated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetAccountCredentialsRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class GetAccountCredentialsResponse(_message.Message):
    __slots__ = ("account_id", "access_token", "credentials_version", "rotated_at")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROTATED_AT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    access_token: str
    credentials_version: int
    rotated_at: _timestamp_pb2.Timestamp
    def __init__(self, account_id: _Optional[str] = ..., access_token: _Optional[str] = ..., credentials_version: _Optional[int] = ..., rotated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
