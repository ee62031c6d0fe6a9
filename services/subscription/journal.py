"""What one ledger transaction records besides ownership: the audit rows, the shards' change
log and the users' watchlist events. Gathered as the operations run, written by the ledger
once, just before commit, so a rolled-back transaction records nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.keys import Key

_AUDIT_COLUMNS = (
    "actions",
    "actors",
    "reasons",
    "tiers",
    "segments",
    "ids",
    "units",
    "users",
    "from_shards",
    "to_shards",
    "details",
)
# Adds before removes keeps a make-before-break order within one change set.
_CHANGE_ORDER = {"add": 0, "update": 1, "remove": 2}


@dataclass
class Journal:
    actor: str
    _audit: list[tuple[Any, ...]] = field(default_factory=list)
    _changes: list[tuple[int, str, int, str, str]] = field(default_factory=list)
    _events: list[tuple[str, str, int, str, str]] = field(default_factory=list)

    def audit(
        self,
        action: str,
        reason: str,
        *,
        tier: str | None = None,
        key: Key | None = None,
        unit_id: int | None = None,
        user_id: str | None = None,
        from_shard: int | None = None,
        to_shard: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        segment, security_id = key if key else (None, None)
        self._audit.append(
            (
                action,
                self.actor,
                reason,
                tier,
                segment,
                security_id,
                unit_id,
                user_id,
                from_shard,
                to_shard,
                json.dumps(details or {}),
            )
        )

    def change(self, shards: Sequence[int | None], key: Key, mode: str, kind: str) -> None:
        """One change of `kind` (add, update, remove) for every shard given that is not None."""
        for shard in shards:
            if shard is not None:
                self._changes.append((shard, *key, mode, kind))

    def event(
        self, user_id: str, kind: str, item_id: int, *, added: Sequence[Key] = (), removed: Sequence[Key] = ()
    ) -> None:
        self._events.append(
            (
                user_id,
                kind,
                item_id,
                json.dumps([list(k) for k in added]),
                json.dumps([list(k) for k in removed]),
            )
        )

    def audit_columns(self) -> dict[str, list[Any]] | None:
        if not self._audit:
            return None
        return dict(zip(_AUDIT_COLUMNS, map(list, zip(*self._audit, strict=True)), strict=True))

    def change_columns(self) -> tuple[dict[str, list[Any]], str] | None:
        """The change rows as columns, and the notification payload: the shards they touch."""
        if not self._changes:
            return None
        changes = sorted(self._changes, key=lambda c: _CHANGE_ORDER[c[4]])
        shards, segments, ids, modes, kinds = map(list, zip(*changes, strict=True))
        columns = {"shards": shards, "segments": segments, "ids": ids, "modes": modes, "changes": kinds}
        return columns, ",".join(map(str, sorted(set(shards))))

    def events(self) -> tuple[dict[str, list[Any]], str] | None:
        """The events as columns, and the notification payload: the users they concern."""
        if not self._events:
            return None
        users, kinds, items, added, removed = map(list, zip(*self._events, strict=True))
        columns = {"users": users, "kinds": kinds, "items": items, "added": added, "removed": removed}
        return columns, ",".join(sorted(set(users)))

    def clear(self) -> None:
        self._audit.clear()
        self._changes.clear()
        self._events.clear()
