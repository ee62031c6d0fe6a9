from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExchangeSegment(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXCHANGE_SEGMENT_UNSPECIFIED: _ClassVar[ExchangeSegment]
    EXCHANGE_SEGMENT_IDX_I: _ClassVar[ExchangeSegment]
    EXCHANGE_SEGMENT_NSE_EQ: _ClassVar[ExchangeSegment]
    EXCHANGE_SEGMENT_NSE_FNO: _ClassVar[ExchangeSegment]
    EXCHANGE_SEGMENT_NSE_CURRENCY: _ClassVar[ExchangeSegment]
    EXCHANGE_SEGMENT_BSE_EQ: _ClassVar[ExchangeSegment]
    EXCHANGE_SEGMENT_MCX_COMM: _ClassVar[ExchangeSegment]
    EXCHANGE_SEGMENT_BSE_CURRENCY: _ClassVar[ExchangeSegment]
    EXCHANGE_SEGMENT_BSE_FNO: _ClassVar[ExchangeSegment]

class InstrumentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTRUMENT_TYPE_UNSPECIFIED: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_INDEX: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_EQUITY: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_FUTIDX: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_OPTIDX: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_FUTSTK: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_OPTSTK: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_FUTCOM: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_OPTFUT: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_FUTCUR: _ClassVar[InstrumentType]
    INSTRUMENT_TYPE_OPTCUR: _ClassVar[InstrumentType]

class OptionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTION_TYPE_UNSPECIFIED: _ClassVar[OptionType]
    OPTION_TYPE_CALL: _ClassVar[OptionType]
    OPTION_TYPE_PUT: _ClassVar[OptionType]

class ExpiryFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPIRY_FLAG_UNSPECIFIED: _ClassVar[ExpiryFlag]
    EXPIRY_FLAG_WEEKLY: _ClassVar[ExpiryFlag]
    EXPIRY_FLAG_MONTHLY: _ClassVar[ExpiryFlag]

class FeedMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEED_MODE_UNSPECIFIED: _ClassVar[FeedMode]
    FEED_MODE_TICKER: _ClassVar[FeedMode]
    FEED_MODE_QUOTE: _ClassVar[FeedMode]
    FEED_MODE_FULL: _ClassVar[FeedMode]
EXCHANGE_SEGMENT_UNSPECIFIED: ExchangeSegment
EXCHANGE_SEGMENT_IDX_I: ExchangeSegment
EXCHANGE_SEGMENT_NSE_EQ: ExchangeSegment
EXCHANGE_SEGMENT_NSE_FNO: ExchangeSegment
EXCHANGE_SEGMENT_NSE_CURRENCY: ExchangeSegment
EXCHANGE_SEGMENT_BSE_EQ: ExchangeSegment
EXCHANGE_SEGMENT_MCX_COMM: ExchangeSegment
EXCHANGE_SEGMENT_BSE_CURRENCY: ExchangeSegment
EXCHANGE_SEGMENT_BSE_FNO: ExchangeSegment
INSTRUMENT_TYPE_UNSPECIFIED: InstrumentType
INSTRUMENT_TYPE_INDEX: InstrumentType
INSTRUMENT_TYPE_EQUITY: InstrumentType
INSTRUMENT_TYPE_FUTIDX: InstrumentType
INSTRUMENT_TYPE_OPTIDX: InstrumentType
INSTRUMENT_TYPE_FUTSTK: InstrumentType
INSTRUMENT_TYPE_OPTSTK: InstrumentType
INSTRUMENT_TYPE_FUTCOM: InstrumentType
INSTRUMENT_TYPE_OPTFUT: InstrumentType
INSTRUMENT_TYPE_FUTCUR: InstrumentType
INSTRUMENT_TYPE_OPTCUR: InstrumentType
OPTION_TYPE_UNSPECIFIED: OptionType
OPTION_TYPE_CALL: OptionType
OPTION_TYPE_PUT: OptionType
EXPIRY_FLAG_UNSPECIFIED: ExpiryFlag
EXPIRY_FLAG_WEEKLY: ExpiryFlag
EXPIRY_FLAG_MONTHLY: ExpiryFlag
FEED_MODE_UNSPECIFIED: FeedMode
FEED_MODE_TICKER: FeedMode
FEED_MODE_QUOTE: FeedMode
FEED_MODE_FULL: FeedMode

class InstrumentKey(_message.Message):
    __slots__ = ("exchange_segment", "security_id")
    EXCHANGE_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SECURITY_ID_FIELD_NUMBER: _ClassVar[int]
    exchange_segment: ExchangeSegment
    security_id: int
    def __init__(self, exchange_segment: _Optional[_Union[ExchangeSegment, str]] = ..., security_id: _Optional[int] = ...) -> None: ...

class Instrument(_message.Message):
    __slots__ = ("key", "exchange", "instrument_type", "trading_symbol", "display_name", "underlying_symbol", "lot_size", "tick_size", "expiry_date", "expiry_flag", "strike_price", "option_type", "series", "previous_close")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TRADING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_SYMBOL_FIELD_NUMBER: _ClassVar[int]
    LOT_SIZE_FIELD_NUMBER: _ClassVar[int]
    TICK_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_DATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FLAG_FIELD_NUMBER: _ClassVar[int]
    STRIKE_PRICE_FIELD_NUMBER: _ClassVar[int]
    OPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_CLOSE_FIELD_NUMBER: _ClassVar[int]
    key: InstrumentKey
    exchange: str
    instrument_type: InstrumentType
    trading_symbol: str
    display_name: str
    underlying_symbol: str
    lot_size: float
    tick_size: float
    expiry_date: str
    expiry_flag: ExpiryFlag
    strike_price: float
    option_type: OptionType
    series: str
    previous_close: float
    def __init__(self, key: _Optional[_Union[InstrumentKey, _Mapping]] = ..., exchange: _Optional[str] = ..., instrument_type: _Optional[_Union[InstrumentType, str]] = ..., trading_symbol: _Optional[str] = ..., display_name: _Optional[str] = ..., underlying_symbol: _Optional[str] = ..., lot_size: _Optional[float] = ..., tick_size: _Optional[float] = ..., expiry_date: _Optional[str] = ..., expiry_flag: _Optional[_Union[ExpiryFlag, str]] = ..., strike_price: _Optional[float] = ..., option_type: _Optional[_Union[OptionType, str]] = ..., series: _Optional[str] = ..., previous_close: _Optional[float] = ...) -> None: ...
