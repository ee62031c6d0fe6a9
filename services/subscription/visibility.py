"""What a user may see of other users in the subscription reports (issue 15 §2).

A user sees every subscribed instrument and how many owners it has (the reference count),
but not who the other owners are: another user's Tier A owner entries stay (so `owners`
still adds up to `ref_count`) with their `user_id` and `item_id` emptied. In an audit
history a user sees the entries of their own units and those of no user (Tier B, moves);
an entry whose actor is someone else (an actor is a bare id, a user's as an admin's) shows
an empty actor and no reason text, which may name another user ("... for user u1").
Admins and services see everything.
"""

from __future__ import annotations

from dataserver.subscription.v1 import subscription_pb2 as pb


def redact_owners(subscription: pb.Subscription, caller: str) -> None:
    """Empties the ids of other users' owner entries, in place."""
    for owner in subscription.owners:
        if owner.user_id and owner.user_id != caller:
            owner.user_id = ""
            owner.item_id = ""


def visible_history(entries: list[pb.AuditEntry], caller: str) -> list[pb.AuditEntry]:
    """The entries `caller` may read, with other users' identities removed."""
    visible = []
    for entry in entries:
        if entry.user_id and entry.user_id != caller:
            continue
        if entry.actor != caller:
            entry.actor = ""
            entry.reason = ""
        visible.append(entry)
    return visible
