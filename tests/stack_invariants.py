"""What must hold in Postgres whatever fault the stack went through: read straight from the
tables (services/common/migrations), not through the services under test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from services.common.keys import Key

# Each query returns the rows that break one invariant; none is the answer.
_VIOLATIONS: dict[str, str] = {
    "a shard holds more than its connection's limit (moves in flight count on both shards)": """
        SELECT shard_id, sum(n) AS n FROM (
            SELECT shard_id, count(*) AS n FROM subscriptions GROUP BY shard_id
            UNION ALL
            SELECT moving_to_shard, count(*) FROM subscriptions WHERE moving_to_shard IS NOT NULL
            GROUP BY moving_to_shard
        ) loads GROUP BY shard_id HAVING sum(n) > %(per_shard)s""",
    "more subscriptions than the account's budget": """
        SELECT count(*) AS n FROM subscriptions HAVING count(*) > %(budget)s""",
    "a subscription on no shard of the account, or moving onto its own shard": """
        SELECT exchange_segment, security_id, shard_id, moving_to_shard FROM subscriptions
        WHERE shard_id NOT BETWEEN 0 AND %(shards)s - 1
           OR moving_to_shard NOT BETWEEN 0 AND %(shards)s - 1 OR moving_to_shard = shard_id""",
    "a ref count, tier or mode that is not its owners'": """
        SELECT s.exchange_segment, s.security_id, s.ref_count, s.tier, s.feed_mode,
               count(o.owner_id) AS owners, bool_or(o.owner_kind = 'tier_b') AS tier_b_owner
        FROM subscriptions s LEFT JOIN subscription_owners o USING (exchange_segment, security_id)
        GROUP BY s.exchange_segment, s.security_id
        HAVING s.ref_count <> count(o.owner_id)
            OR (s.tier = 'B') IS DISTINCT FROM coalesce(bool_or(o.owner_kind = 'tier_b'), false)
            OR s.feed_mode <> (ARRAY['TICKER', 'QUOTE', 'FULL'])[
                   max(CASE o.feed_mode WHEN 'TICKER' THEN 1 WHEN 'QUOTE' THEN 2 ELSE 3 END)]""",
    "a unit owner whose watchlist item is not active": """
        SELECT o.exchange_segment, o.security_id, o.owner_id FROM subscription_owners o
        WHERE o.owner_kind = 'unit' AND NOT EXISTS (
            SELECT 1 FROM watchlist_items w WHERE w.item_id::text = o.owner_id AND w.state = 'ACTIVE')""",
    "an active watchlist item whose instruments are not all owned (a half-committed add)": """
        SELECT w.item_id, w.symbol, w.instrument_count, count(o.owner_id) AS owned
        FROM watchlist_items w
        LEFT JOIN subscription_owners o ON o.owner_kind = 'unit' AND o.owner_id = w.item_id::text
        WHERE w.state = 'ACTIVE' GROUP BY w.item_id HAVING count(o.owner_id) <> w.instrument_count""",
    "a Tier B owner with no Tier B entry": """
        SELECT o.exchange_segment, o.security_id, o.owner_id FROM subscription_owners o
        WHERE o.owner_kind = 'tier_b' AND NOT EXISTS (SELECT 1 FROM tier_b_entries e WHERE e.entry_id = o.owner_id)""",
    "subscription_counts out of step with the subscriptions (its triggers)": """
        WITH actual AS (
            SELECT shard_id, tier, false AS incoming, count(*) AS n FROM subscriptions GROUP BY shard_id, tier
            UNION ALL
            SELECT moving_to_shard, tier, true, count(*) FROM subscriptions WHERE moving_to_shard IS NOT NULL
            GROUP BY moving_to_shard, tier
        )
        SELECT coalesce(a.shard_id, c.shard_id) AS shard_id, coalesce(a.tier, c.tier) AS tier,
               coalesce(a.incoming, c.incoming) AS incoming, a.n AS actual, c.n AS counted
        FROM actual a FULL JOIN subscription_counts c USING (shard_id, tier, incoming)
        WHERE coalesce(a.n, 0) <> coalesce(c.n, 0)""",
    "a watchlist item twice (same user, symbol, expiry and kind)": """
        SELECT user_id, symbol, expiry_date, underlying_only, count(*) AS n FROM watchlist_items
        GROUP BY user_id, symbol, expiry_date, underlying_only HAVING count(*) > 1""",
}


def violations(conninfo: str, shards: int = 5, per_shard: int = 5000) -> dict[str, list[dict[str, Any]]]:
    """Every broken invariant with the rows that break it; empty when all hold."""
    params = {"shards": shards, "per_shard": per_shard, "budget": shards * per_shard}
    found: dict[str, list[dict[str, Any]]] = {}
    with psycopg.connect(conninfo, row_factory=dict_row, connect_timeout=5) as conn:
        # One snapshot for all checks, so a write between two queries cannot look like a break.
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for name, query in _VIOLATIONS.items():
            rows = conn.execute(query, params).fetchall()
            if rows:
                found[name] = rows[:10]
    return found


@dataclass(frozen=True)
class Stored:
    """What Postgres holds that a fault must not lose or change: the subscriptions (wherever
    they are placed), their owners, the watchlists and the Tier B plan."""

    subscriptions: dict[Key, tuple[str, str, int]]  # (mode, tier, ref count)
    owners: frozenset[tuple[str, int, str, str, str]]
    items: dict[int, tuple[Any, ...]]
    tier_b: tuple[Any, ...]

    def tier_b_owners(self) -> frozenset[tuple[str, int, str, str, str]]:
        return frozenset(o for o in self.owners if o[2] == "tier_b")


def stored(conninfo: str) -> Stored:
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        subscriptions = {
            (segment, security_id): (mode, tier, refs)
            for segment, security_id, mode, tier, refs in conn.execute(
                "SELECT exchange_segment, security_id, feed_mode, tier, ref_count FROM subscriptions"
            )
        }
        owners = frozenset(
            conn.execute(
                "SELECT exchange_segment, security_id, owner_kind, owner_id, feed_mode FROM subscription_owners"
            ).fetchall()
        )
        items = {
            row[0]: tuple(row[1:])
            for row in conn.execute(
                """SELECT item_id, user_id, symbol, expiry_date, underlying_only, strikes_each_side, feed_mode,
                          state, instrument_count, atm_strike FROM watchlist_items"""
            )
        }
        entries = conn.execute(
            """SELECT entry_id, kind, underlying_symbol, expiry_date, strikes_each_side, include_underlying,
                      feed_mode, underlying_segment, underlying_security_id, atm_strike, strike_step, instrument_count
               FROM tier_b_entries ORDER BY entry_id"""
        ).fetchall()
        plan = conn.execute("SELECT request FROM tier_b_plan").fetchall()
    return Stored(subscriptions, owners, items, (tuple(entries), tuple(plan)))


def shard_assignments(conninfo: str) -> dict[int, int]:
    """Instruments each shard should hold: its own and those moving onto it."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        rows = conn.execute(
            """SELECT shard_id, sum(n)::int FROM (
                   SELECT shard_id, count(*) AS n FROM subscriptions GROUP BY shard_id
                   UNION ALL
                   SELECT moving_to_shard, count(*) FROM subscriptions WHERE moving_to_shard IS NOT NULL
                   GROUP BY moving_to_shard) loads
               GROUP BY shard_id"""
        ).fetchall()
    return {shard: n for shard, n in rows}


def instruments_on(conninfo: str, shard_id: int, limit: int) -> list[Key]:
    """Up to `limit` instruments placed on `shard_id` and not moving, Tier B first (they are
    subscribed for the whole day), in a stable order."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        rows = conn.execute(
            """SELECT exchange_segment, security_id FROM subscriptions
               WHERE shard_id = %s AND moving_to_shard IS NULL
               ORDER BY tier DESC, exchange_segment, security_id LIMIT %s""",
            (shard_id, limit),
        ).fetchall()
    return [(segment, security_id) for segment, security_id in rows]


def last_audit_id(conninfo: str) -> int:
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        row = conn.execute("SELECT coalesce(max(log_id), 0) FROM subscription_log").fetchone()
    return int(row[0]) if row else 0


def moves_started(conninfo: str, from_shard: int, after_id: int) -> dict[Key, str]:
    """The audit's reason for each move off `from_shard` started after audit entry `after_id`."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        rows = conn.execute(
            """SELECT exchange_segment, security_id, reason FROM subscription_log
               WHERE action = 'MOVE' AND from_shard = %s AND log_id > %s AND details->>'phase' = 'started'""",
            (from_shard, after_id),
        ).fetchall()
    return {(segment, security_id): reason for segment, security_id, reason in rows}
