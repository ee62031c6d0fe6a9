"""The instrument vocabulary every service shares: Dhan's segment names, their wire bytes,
and their protobuf enums."""

from __future__ import annotations

from dataserver.common.v1 import common_pb2

# Dhan segment name -> the byte in binary feed packets.
SEGMENT_WIRE_CODES: dict[str, int] = {
    "IDX_I": 0,
    "NSE_EQ": 1,
    "NSE_FNO": 2,
    "NSE_CURRENCY": 3,
    "BSE_EQ": 4,
    "MCX_COMM": 5,
    "BSE_CURRENCY": 7,
    "BSE_FNO": 8,
}
SEGMENTS_BY_WIRE_CODE: dict[int, str] = {code: name for name, code in SEGMENT_WIRE_CODES.items()}

# getattr gives the enum members their declared type (EnumTypeWrapper.Value() says int).
SEGMENT_TO_PROTO: dict[str, common_pb2.ExchangeSegment] = {
    name: getattr(common_pb2, f"EXCHANGE_SEGMENT_{name}") for name in SEGMENT_WIRE_CODES
}
PROTO_TO_SEGMENT: dict[int, str] = {value: name for name, value in SEGMENT_TO_PROTO.items()}

# (exchange, master segment letter) -> Dhan segment name.
MASTER_SEGMENTS: dict[tuple[str, str], str] = {
    ("NSE", "I"): "IDX_I",
    ("BSE", "I"): "IDX_I",
    ("NSE", "E"): "NSE_EQ",
    ("NSE", "D"): "NSE_FNO",
    ("NSE", "C"): "NSE_CURRENCY",
    ("BSE", "E"): "BSE_EQ",
    ("BSE", "D"): "BSE_FNO",
    ("BSE", "C"): "BSE_CURRENCY",
    ("MCX", "M"): "MCX_COMM",
}

INSTRUMENT_TYPES = ("INDEX", "EQUITY", "FUTIDX", "OPTIDX", "FUTSTK", "OPTSTK", "FUTCOM", "OPTFUT", "FUTCUR", "OPTCUR")
INSTRUMENT_TYPE_TO_PROTO: dict[str, common_pb2.InstrumentType] = {
    name: getattr(common_pb2, f"INSTRUMENT_TYPE_{name}") for name in INSTRUMENT_TYPES
}
PROTO_TO_INSTRUMENT_TYPE: dict[int, str] = {value: name for name, value in INSTRUMENT_TYPE_TO_PROTO.items()}
FUTURE_TYPES = frozenset({"FUTIDX", "FUTSTK", "FUTCOM", "FUTCUR"})
OPTION_TYPES = frozenset({"OPTIDX", "OPTSTK", "OPTFUT", "OPTCUR"})

SEGMENT_NAMES_ACCEPTED = ", ".join(f"EXCHANGE_SEGMENT_{name}" for name in SEGMENT_WIRE_CODES)
