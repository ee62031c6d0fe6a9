"""Rows and outcomes to protobuf messages."""

from __future__ import annotations

from typing import cast

from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2
from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.keys import Key, key_proto
from services.common.timestamps import timestamp
from services.subscription.model import Eviction
from services.subscription.sql import Row

MODE_TO_PROTO = {
    "TICKER": common_pb2.FEED_MODE_TICKER,
    "QUOTE": common_pb2.FEED_MODE_QUOTE,
    "FULL": common_pb2.FEED_MODE_FULL,
}
PROTO_TO_MODE = {value: name for name, value in MODE_TO_PROTO.items()}
TIER_TO_PROTO = {"A": pb.TIER_A, "B": pb.TIER_B}
PROTO_TO_TIER = {value: name for name, value in TIER_TO_PROTO.items()}
STATE_TO_PROTO = {"ACTIVE": pb.WATCHLIST_ITEM_STATE_ACTIVE, "EVICTED": pb.WATCHLIST_ITEM_STATE_EVICTED}
PROTO_TO_STATE = {value: name for name, value in STATE_TO_PROTO.items()}
REASON_TO_PROTO = {
    "CAPACITY": pb.EVICTION_REASON_CAPACITY,
    "TIER_B_PLAN": pb.EVICTION_REASON_TIER_B_PLAN,
    "RECENTER": pb.EVICTION_REASON_RECENTER,
    "END_OF_DAY": pb.EVICTION_REASON_END_OF_DAY,
    "ADMIN": pb.EVICTION_REASON_ADMIN,
    "EXPIRED": pb.EVICTION_REASON_EXPIRED,
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


def mode_from_proto(value: common_pb2.FeedMode) -> str:
    return PROTO_TO_MODE.get(value, "FULL")


def price_source(stored: str | None) -> registry_pb2.PriceSource:
    """A price source stored as its number's text. Proto3 enums are open: the number passes
    through as it is, whatever the generated enum lists."""
    return cast(registry_pb2.PriceSource, int(stored or 0))


def watchlist_item(row: Row, instruments: list[Key] | None = None) -> pb.WatchlistItem:
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
        price_source=price_source(row["price_source"]),
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


def audit_entry(row: Row) -> pb.AuditEntry:
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
        old_mode=MODE_TO_PROTO.get(details.get("old_mode", ""), common_pb2.FEED_MODE_UNSPECIFIED),
        new_mode=MODE_TO_PROTO.get(details.get("new_mode", ""), common_pb2.FEED_MODE_UNSPECIFIED),
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
