"""Registry records to and from protobuf messages."""

from __future__ import annotations

from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2

from services.common.instruments import INSTRUMENT_TYPE_TO_PROTO
from services.common.keys import key_proto
from services.dhan.master import InstrumentRecord
from services.registry.store import MasterVersion

_OPTION_TYPES = {"CE": common_pb2.OPTION_TYPE_CALL, "PE": common_pb2.OPTION_TYPE_PUT}
EXPIRY_FLAGS = {"W": common_pb2.EXPIRY_FLAG_WEEKLY, "M": common_pb2.EXPIRY_FLAG_MONTHLY}
MASTER_SOURCES = {
    "dhan": registry_pb2.MASTER_SOURCE_DHAN,
    "file": registry_pb2.MASTER_SOURCE_FILE,
    "generated": registry_pb2.MASTER_SOURCE_GENERATED,
}


def instrument_proto(record: InstrumentRecord) -> common_pb2.Instrument:
    return common_pb2.Instrument(
        key=key_proto((record.segment, record.security_id)),
        exchange=record.exchange,
        instrument_type=INSTRUMENT_TYPE_TO_PROTO[record.instrument_type],
        trading_symbol=record.trading_symbol,
        display_name=record.display_name,
        underlying_symbol=record.underlying_symbol,
        lot_size=record.lot_size,
        tick_size=record.tick_size,
        expiry_date=record.expiry.isoformat() if record.expiry else "",
        expiry_flag=EXPIRY_FLAGS.get(record.expiry_flag, common_pb2.EXPIRY_FLAG_UNSPECIFIED),
        strike_price=record.strike or 0.0,
        option_type=_OPTION_TYPES.get(record.option_type, common_pb2.OPTION_TYPE_UNSPECIFIED),
        series=record.series,
        previous_close=record.previous_close or 0.0,
    )


def master_status_proto(version: MasterVersion) -> registry_pb2.MasterStatus:
    status = registry_pb2.MasterStatus(
        row_count=version.row_count,
        rejected_count=version.rejected_count,
        source=MASTER_SOURCES[version.source],
        source_detail=version.source_detail,
        version=version.version,
        trading_date=version.trading_date.isoformat(),
        load_seconds=version.load_seconds,
    )
    status.loaded_at.FromDatetime(version.loaded_at)
    return status
