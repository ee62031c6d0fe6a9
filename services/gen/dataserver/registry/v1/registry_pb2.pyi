import datetime

from dataserver.common.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DerivativeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DERIVATIVE_KIND_UNSPECIFIED: _ClassVar[DerivativeKind]
    DERIVATIVE_KIND_OPTIONS: _ClassVar[DerivativeKind]
    DERIVATIVE_KIND_FUTURES: _ClassVar[DerivativeKind]

class PriceSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRICE_SOURCE_UNSPECIFIED: _ClassVar[PriceSource]
    PRICE_SOURCE_REQUEST: _ClassVar[PriceSource]
    PRICE_SOURCE_LAST_PRICE: _ClassVar[PriceSource]
    PRICE_SOURCE_PREVIOUS_CLOSE: _ClassVar[PriceSource]

class MasterSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASTER_SOURCE_UNSPECIFIED: _ClassVar[MasterSource]
    MASTER_SOURCE_DHAN: _ClassVar[MasterSource]
    MASTER_SOURCE_FILE: _ClassVar[MasterSource]
    MASTER_SOURCE_GENERATED: _ClassVar[MasterSource]
DERIVATIVE_KIND_UNSPECIFIED: DerivativeKind
DERIVATIVE_KIND_OPTIONS: DerivativeKind
DERIVATIVE_KIND_FUTURES: DerivativeKind
PRICE_SOURCE_UNSPECIFIED: PriceSource
PRICE_SOURCE_REQUEST: PriceSource
PRICE_SOURCE_LAST_PRICE: PriceSource
PRICE_SOURCE_PREVIOUS_CLOSE: PriceSource
MASTER_SOURCE_UNSPECIFIED: MasterSource
MASTER_SOURCE_DHAN: MasterSource
MASTER_SOURCE_FILE: MasterSource
MASTER_SOURCE_GENERATED: MasterSource

class SearchInstrumentsRequest(_message.Message):
    __slots__ = ("query", "exchange_segments", "instrument_types", "page_size", "page_token")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    query: str
    exchange_segments: _containers.RepeatedScalarFieldContainer[_common_pb2.ExchangeSegment]
    instrument_types: _containers.RepeatedScalarFieldContainer[_common_pb2.InstrumentType]
    page_size: int
    page_token: str
    def __init__(self, query: _Optional[str] = ..., exchange_segments: _Optional[_Iterable[_Union[_common_pb2.ExchangeSegment, str]]] = ..., instrument_types: _Optional[_Iterable[_Union[_common_pb2.InstrumentType, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchInstrumentsResponse(_message.Message):
    __slots__ = ("instruments", "next_page_token", "total_size")
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    instruments: _containers.RepeatedCompositeFieldContainer[_common_pb2.Instrument]
    next_page_token: str
    total_size: int
    def __init__(self, instruments: _Optional[_Iterable[_Union[_common_pb2.Instrument, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class GetInstrumentRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: _common_pb2.InstrumentKey
    def __init__(self, key: _Optional[_Union[_common_pb2.InstrumentKey, _Mapping]] = ...) -> None: ...

class GetInstrumentResponse(_message.Message):
    __slots__ = ("instrument",)
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    instrument: _common_pb2.Instrument
    def __init__(self, instrument: _Optional[_Union[_common_pb2.Instrument, _Mapping]] = ...) -> None: ...

class ResolveTradingSymbolRequest(_message.Message):
    __slots__ = ("trading_symbol", "exchange_segment")
    TRADING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    trading_symbol: str
    exchange_segment: _common_pb2.ExchangeSegment
    def __init__(self, trading_symbol: _Optional[str] = ..., exchange_segment: _Optional[_Union[_common_pb2.ExchangeSegment, str]] = ...) -> None: ...

class ResolveTradingSymbolResponse(_message.Message):
    __slots__ = ("instruments",)
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    instruments: _containers.RepeatedCompositeFieldContainer[_common_pb2.Instrument]
    def __init__(self, instruments: _Optional[_Iterable[_Union[_common_pb2.Instrument, _Mapping]]] = ...) -> None: ...

class ListExpiriesRequest(_message.Message):
    __slots__ = ("underlying_symbol", "kind", "page_size", "page_token")
    UNDERLYING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    underlying_symbol: str
    kind: DerivativeKind
    page_size: int
    page_token: str
    def __init__(self, underlying_symbol: _Optional[str] = ..., kind: _Optional[_Union[DerivativeKind, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Expiry(_message.Message):
    __slots__ = ("expiry_date", "expiry_flag", "has_options", "has_futures", "strike_count")
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FLAG_FIELD_NUMBER: _ClassVar[int]
    HAS_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_FUTURES_FIELD_NUMBER: _ClassVar[int]
    STRIKE_COUNT_FIELD_NUMBER: _ClassVar[int]
    expiry_date: str
    expiry_flag: _common_pb2.ExpiryFlag
    has_options: bool
    has_futures: bool
    strike_count: int
    def __init__(self, expiry_date: _Optional[str] = ..., expiry_flag: _Optional[_Union[_common_pb2.ExpiryFlag, str]] = ..., has_options: _Optional[bool] = ..., has_futures: _Optional[bool] = ..., strike_count: _Optional[int] = ...) -> None: ...

class ListExpiriesResponse(_message.Message):
    __slots__ = ("expiries", "next_page_token")
    EXPIRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    expiries: _containers.RepeatedCompositeFieldContainer[Expiry]
    next_page_token: str
    def __init__(self, expiries: _Optional[_Iterable[_Union[Expiry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetOptionChainRequest(_message.Message):
    __slots__ = ("underlying_symbol", "expiry_date", "underlying_price", "use_last_price", "strikes_each_side")
    UNDERLYING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_PRICE_FIELD_NUMBER: _ClassVar[int]
    USE_LAST_PRICE_FIELD_NUMBER: _ClassVar[int]
    STRIKES_EACH_SIDE_FIELD_NUMBER: _ClassVar[int]
    underlying_symbol: str
    expiry_date: str
    underlying_price: float
    use_last_price: bool
    strikes_each_side: int
    def __init__(self, underlying_symbol: _Optional[str] = ..., expiry_date: _Optional[str] = ..., underlying_price: _Optional[float] = ..., use_last_price: _Optional[bool] = ..., strikes_each_side: _Optional[int] = ...) -> None: ...

class ChainStrike(_message.Message):
    __slots__ = ("strike_price", "call", "put")
    STRIKE_PRICE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    strike_price: float
    call: _common_pb2.Instrument
    put: _common_pb2.Instrument
    def __init__(self, strike_price: _Optional[float] = ..., call: _Optional[_Union[_common_pb2.Instrument, _Mapping]] = ..., put: _Optional[_Union[_common_pb2.Instrument, _Mapping]] = ...) -> None: ...

class GetOptionChainResponse(_message.Message):
    __slots__ = ("underlying", "expiry_date", "underlying_price", "price_source", "atm_strike", "strike_step", "strikes", "strike_count", "listed_strike_count", "clipped_below", "clipped_above", "future")
    UNDERLYING_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_PRICE_FIELD_NUMBER: _ClassVar[int]
    PRICE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ATM_STRIKE_FIELD_NUMBER: _ClassVar[int]
    STRIKE_STEP_FIELD_NUMBER: _ClassVar[int]
    STRIKES_FIELD_NUMBER: _ClassVar[int]
    STRIKE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LISTED_STRIKE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_BELOW_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_ABOVE_FIELD_NUMBER: _ClassVar[int]
    FUTURE_FIELD_NUMBER: _ClassVar[int]
    underlying: _common_pb2.Instrument
    expiry_date: str
    underlying_price: float
    price_source: PriceSource
    atm_strike: float
    strike_step: float
    strikes: _containers.RepeatedCompositeFieldContainer[ChainStrike]
    strike_count: int
    listed_strike_count: int
    clipped_below: int
    clipped_above: int
    future: _common_pb2.Instrument
    def __init__(self, underlying: _Optional[_Union[_common_pb2.Instrument, _Mapping]] = ..., expiry_date: _Optional[str] = ..., underlying_price: _Optional[float] = ..., price_source: _Optional[_Union[PriceSource, str]] = ..., atm_strike: _Optional[float] = ..., strike_step: _Optional[float] = ..., strikes: _Optional[_Iterable[_Union[ChainStrike, _Mapping]]] = ..., strike_count: _Optional[int] = ..., listed_strike_count: _Optional[int] = ..., clipped_below: _Optional[int] = ..., clipped_above: _Optional[int] = ..., future: _Optional[_Union[_common_pb2.Instrument, _Mapping]] = ...) -> None: ...

class ReloadMasterRequest(_message.Message):
    __slots__ = ("source", "file_path", "trading_date")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    TRADING_DATE_FIELD_NUMBER: _ClassVar[int]
    source: MasterSource
    file_path: str
    trading_date: str
    def __init__(self, source: _Optional[_Union[MasterSource, str]] = ..., file_path: _Optional[str] = ..., trading_date: _Optional[str] = ...) -> None: ...

class RejectedRow(_message.Message):
    __slots__ = ("line_number", "reason")
    LINE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    line_number: int
    reason: str
    def __init__(self, line_number: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class MasterStatus(_message.Message):
    __slots__ = ("row_count", "rejected_count", "source", "source_detail", "loaded_at", "version", "trading_date", "load_seconds")
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRADING_DATE_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    row_count: int
    rejected_count: int
    source: MasterSource
    source_detail: str
    loaded_at: _timestamp_pb2.Timestamp
    version: int
    trading_date: str
    load_seconds: float
    def __init__(self, row_count: _Optional[int] = ..., rejected_count: _Optional[int] = ..., source: _Optional[_Union[MasterSource, str]] = ..., source_detail: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ..., trading_date: _Optional[str] = ..., load_seconds: _Optional[float] = ...) -> None: ...

class ReloadMasterResponse(_message.Message):
    __slots__ = ("status", "rejected_rows")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_ROWS_FIELD_NUMBER: _ClassVar[int]
    status: MasterStatus
    rejected_rows: _containers.RepeatedCompositeFieldContainer[RejectedRow]
    def __init__(self, status: _Optional[_Union[MasterStatus, _Mapping]] = ..., rejected_rows: _Optional[_Iterable[_Union[RejectedRow, _Mapping]]] = ...) -> None: ...

class GetMasterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMasterStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: MasterStatus
    def __init__(self, status: _Optional[_Union[MasterStatus, _Mapping]] = ...) -> None: ...
