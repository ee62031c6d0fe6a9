import datetime

from dataserver.common.v1 import common_pb2 as _common_pb2
from dataserver.feed.v1 import feed_pb2 as _feed_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamShardTicksRequest(_message.Message):
    __slots__ = ("gateway_id",)
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    def __init__(self, gateway_id: _Optional[str] = ...) -> None: ...

class ShardHello(_message.Message):
    __slots__ = ("shard_id", "shard_epoch", "started_at")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    shard_epoch: str
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, shard_id: _Optional[int] = ..., shard_epoch: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RawPackets(_message.Message):
    __slots__ = ("records", "count")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    records: bytes
    count: int
    def __init__(self, records: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class ShardInstrument(_message.Message):
    __slots__ = ("key", "mode", "subscribed")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    mode: _common_pb2.FeedMode
    subscribed: bool
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ..., mode: _Optional[_Union[_common_pb2.FeedMode, str]] = ..., subscribed: _Optional[bool] = ...) -> None: ...

class ShardSnapshot(_message.Message):
    __slots__ = ("packets", "instruments", "assignment_version")
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    packets: RawPackets
    instruments: _containers.RepeatedCompositeFieldContainer[ShardInstrument]
    assignment_version: int
    def __init__(self, packets: _Optional[_Union[RawPackets, _Mapping]] = ..., instruments: _Optional[_Iterable[_Union[ShardInstrument, _Mapping]]] = ..., assignment_version: _Optional[int] = ...) -> None: ...

class ShardInstrumentsChange(_message.Message):
    __slots__ = ("upserted", "removed", "assignment_version")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    upserted: _containers.RepeatedCompositeFieldContainer[ShardInstrument]
    removed: _containers.RepeatedCompositeFieldContainer[_common_pb2.InstrumentKey]
    assignment_version: int
    def __init__(self, upserted: _Optional[_Iterable[_Union[ShardInstrument, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[_common_pb2.InstrumentKey, _Mapping]]] = ..., assignment_version: _Optional[int] = ...) -> None: ...

class StreamShardTicksResponse(_message.Message):
    __slots__ = ("shard_sequence", "hello", "snapshot", "packets", "instruments_change", "status", "heartbeat")
    SHARD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_CHANGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    shard_sequence: int
    hello: ShardHello
    snapshot: ShardSnapshot
    packets: RawPackets
    instruments_change: ShardInstrumentsChange
    status: _feed_pb2.ShardStatus
    heartbeat: _feed_pb2.Heartbeat
    def __init__(self, shard_sequence: _Optional[int] = ..., hello: _Optional[_Union[ShardHello, _Mapping]] = ..., snapshot: _Optional[_Union[ShardSnapshot, _Mapping]] = ..., packets: _Optional[_Union[RawPackets, _Mapping]] = ..., instruments_change: _Optional[_Union[ShardInstrumentsChange, _Mapping]] = ..., status: _Optional[_Union[_feed_pb2.ShardStatus, _Mapping]] = ..., heartbeat: _Optional[_Union[_feed_pb2.Heartbeat, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _feed_pb2.ShardStatus
    def __init__(self, status: _Optional[_Union[_feed_pb2.ShardStatus, _Mapping]] = ...) -> None: ...
