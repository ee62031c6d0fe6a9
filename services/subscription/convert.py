"""Rows and outcomes to protobuf messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dataserver.common.v1 import common_pb2
from dataserver.subscription.v1 import subscription_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import InvalidArgument
from services.common.instruments import PROTO_TO_SEGMENT, SEGMENT_TO_PROTO
from services.subscription.model import Eviction, Key

MODE_TO_PROTO = {
    "TICKER": common_pb2.FEED_MODE_TICKER,
    "QUOTE": common_pb2.FEED_MODE_QUOTE,
    "FULL": common_pb2.FEED_MODE_FULL,
}
PROTO_TO_MODE = {value: name for name, value in MODE_TO_PROTO.items()}
TIER_TO_PROTO = {"A": pb.TIER_A, "B": pb.TIER_B}
PROTO_TO_TIER = {value: name for name, value in TIER_TO_PROTO.items()}
STATE_TO_PROTO = {"ACTIVE": pb.WATCHLIST_ITEM_STATE_ACTIVE, "EVICTED": pb.WATCHLIST_ITEM_STATE_EVICTED}
REASON_TO_PROTO = {
    "CAPACITY": pb.EVICTION_REASON_CAPACITY,
    "TIER_B_PLAN": pb.EVICTION_REASON_TIER_B_PLAN,
    "RECENTER": pb.EVICTION_REASON_RECENTER,
    "END_OF_DAY": pb.EVICTION_REASON_END_OF_DAY,
    "ADMIN": pb.EVICTION_REASON_ADMIN,
}
ACTION_TO_PROTO = {
    "SUBSCRIBE": pb.AUDIT_ACTION_SUBSCRIBE,
    "UNSUBSCRIBE": pb.AUDIT_ACTION_UNSUBSCRIBE,
    "EVICT": pb.AUDIT_ACTION_EVICT,
    "MOVE": pb.AUDIT_ACTION_MOVE,
    "RECENTER": pb.AUDIT_ACTION_RECENTER,
    "MODE_CHANGE": pb.AUDIT_ACTION_MODE_CHANGE,
}
PROTO_TO_ACTION = {value: name for name, value in ACTION_TO_PROTO.items()}
EVENT_KINDS = {
    "added": pb.WATCHLIST_EVENT_KIND_ADDED,
    "removed": pb.WATCHLIST_EVENT_KIND_REMOVED,
    "evicted": pb.WATCHLIST_EVENT_KIND_EVICTED,
    "recentered": pb.WATCHLIST_EVENT_KIND_RECENTERED,
}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def key_proto(key: Key) -> common_pb2.InstrumentKey:
    return common_pb2.InstrumentKey(exchange_segment=SEGMENT_TO_PROTO[key[0]], security_id=key[1])  # type: ignore[arg-type]


def key_from_proto(proto: common_pb2.InstrumentKey, field: str = "key") -> Key:
    segment = PROTO_TO_SEGMENT.get(proto.exchange_segment)
    if segment is None or proto.security_id == 0:
        raise InvalidArgument(f"{field} needs an exchange_segment and a positive security_id")
    return (segment, proto.security_id)


def mode_from_proto(value: int) -> str:
    return PROTO_TO_MODE.get(value, "FULL")


def watchlist_item(row: dict[str, Any], instruments: list[Key] | None = None) -> pb.WatchlistItem:
    return pb.WatchlistItem(
        item_id=str(row["item_id"]),
        user_id=row["user_id"],
        symbol=row["symbol"],
        state=STATE_TO_PROTO[row["state"]],
        underlying=key_proto((row["underlying_segment"], row["underlying_security_id"])),
        expiry_date=row["expiry_date"].isoformat() if row["expiry_date"] else "",
        atm_strike=row["atm_strike"] or 0.0,
        strikes_each_side=row["strikes_each_side"],
        instrument_count=row["instrument_count"],
        mode=MODE_TO_PROTO[row["feed_mode"]],
        underlying_price=row["underlying_price"] or 0.0,
        price_source=int(row["price_source"] or 0),  # type: ignore[arg-type]
        created_at=timestamp(row["created_at"]),
        last_used_at=timestamp(row["last_used_at"]),
        evicted_at=timestamp(row["evicted_at"]),
        eviction_reason=REASON_TO_PROTO.get(row["eviction_reason"] or "", pb.EVICTION_REASON_UNSPECIFIED),
        eviction_message=row["eviction_message"] or "",
        instruments=[key_proto(k) for k in instruments or ()],
    )


def evicted_unit(eviction: Eviction, *, show_user: bool) -> pb.EvictedUnit:
    return pb.EvictedUnit(
        item_id=str(eviction.item_id),
        user_id=eviction.user_id if show_user else "",
        symbol=eviction.symbol,
        expiry_date=eviction.expiry.isoformat() if eviction.expiry else "",
        reason=REASON_TO_PROTO[eviction.reason],
        message=eviction.message,
        instruments_released=eviction.released,
        last_used_at=timestamp(eviction.last_used_at),
    )


def audit_entry(row: dict[str, Any]) -> pb.AuditEntry:
    details = row["details"] or {}
    entry = pb.AuditEntry(
        entry_id=row["log_id"],
        occurred_at=timestamp(row["logged_at"]),
        action=ACTION_TO_PROTO.get(row["action"], pb.AUDIT_ACTION_UNSPECIFIED),
        actor=row["actor"],
        reason=row["reason"],
        tier=TIER_TO_PROTO.get(row["tier"] or "", pb.TIER_UNSPECIFIED),
        item_id=str(row["unit_id"]) if row["unit_id"] else "",
        user_id=row["user_id"] or "",
        old_mode=MODE_TO_PROTO.get(details.get("old_mode", ""), 0),  # type: ignore[arg-type]
        new_mode=MODE_TO_PROTO.get(details.get("new_mode", ""), 0),  # type: ignore[arg-type]
        old_atm_strike=details.get("old_atm") or 0.0,
        new_atm_strike=details.get("new_atm") or 0.0,
    )
    owner = str(details.get("owner", ""))
    if owner.startswith("tier_b:"):
        entry.plan_entry_id = owner.removeprefix("tier_b:")
    if row["exchange_segment"]:
        entry.key.CopyFrom(key_proto((row["exchange_segment"], row["security_id"])))
    if row["from_shard"] is not None:
        entry.from_shard_id = row["from_shard"]
    if row["to_shard"] is not None:
        entry.to_shard_id = row["to_shard"]
    return entry
