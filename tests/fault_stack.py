"""The fault tests' view of a running stack: its shards' status as the gateway sees it, which
simulator connection belongs to which shard, when the whole stack is healthy again, and
what must hold after each fault."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import psutil
import psycopg
from dataserver.feed.v1 import feed_pb2, feed_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2, subscription_pb2_grpc

from tests.stack_fixtures import Stack, child, child_or_none, http_json, serving, until
from tests.stack_invariants import Stored, instruments_on, shard_assignments, stored, violations
from tests.stack_terminal import Terminal, key_set

SHARDS = 5
HEALTHY_TIMEOUT_SECONDS = 90.0
RECOVERY_SECONDS = 30.0  # a generous functional bound, not a timing
TERMINAL_INSTRUMENTS = 40
MIN_TERMINAL_INSTRUMENTS = 5
INTERRUPTED, RESTORED = feed_pb2.UPSTREAM_STATE_INTERRUPTED, feed_pb2.UPSTREAM_STATE_RESTORED


def shard_statuses(stack: Stack) -> dict[int, feed_pb2.ShardStatus]:
    """Every shard's status as the gateway sees it; empty when the gateway does not answer."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.gateway}") as channel:
        try:
            reply = feed_pb2_grpc.GatewayServiceStub(channel).GetShardStatus(
                feed_pb2.GetShardStatusRequest(), timeout=5
            )
        except grpc.RpcError:
            return {}
    return {s.shard_id: s for s in reply.shards}


def shard_status(stack: Stack, shard_id: int) -> feed_pb2.ShardStatus:
    return shard_statuses(stack).get(shard_id) or feed_pb2.ShardStatus(shard_id=shard_id)


def shard_usage(stack: Stack) -> dict[int, subscription_pb2.ShardUsage]:
    """The subscription service's view of each shard (placement and, with failover, health)."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.subscription}") as channel:
        reply = subscription_pb2_grpc.SubscriptionServiceStub(channel).GetSubscriptionStatus(
            subscription_pb2.GetSubscriptionStatusRequest(), timeout=10
        )
    return {s.shard_id: s for s in reply.shards}


def simulator(stack: Stack, method: str = "GET", path: str = "/health", body: dict[str, Any] | None = None) -> Any:
    return http_json(stack.ports.control, method, path, body)


def feed_connection(stack: Stack, shard_id: int) -> int | None:
    """The simulator's id of the connection that shard's process holds open; None when none."""
    process = child_or_none(stack, f"shard-{shard_id}")
    if process is None:
        return None
    try:
        local = {
            c.laddr.port
            for c in process.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == stack.ports.feed and c.status == psutil.CONN_ESTABLISHED
        }
    except psutil.NoSuchProcess:
        return None
    ids = [c["id"] for c in simulator(stack, path="/connections")["connections"] if _port(c["remote"]) in local]
    return ids[0] if len(ids) == 1 else None


def _port(remote: str) -> int:
    return int(remote.rsplit(":", 1)[1])


def _not_healthy(stack: Stack, conninfo: str) -> str:
    """Why the stack is not (yet) healthy; empty when it is."""
    if stack.process.poll() is not None:
        raise AssertionError(f"the stack exited with {stack.process.returncode}")
    for process in stack.plan():
        if process.http_health_port:
            with contextlib.suppress(OSError):
                if simulator(stack).get("connections") == SHARDS:
                    continue
            return "the simulator does not count five connections"
        if not serving(process.grpc_port):
            return f"{process.name} is not SERVING"
    statuses = shard_statuses(stack)
    down = [n for n in range(SHARDS) if n not in statuses or not statuses[n].reachable]
    if down:
        return f"the gateway does not reach shards {down}"
    unconnected = [n for n, s in statuses.items() if s.connection_state != feed_pb2.CONNECTION_STATE_CONNECTED]
    if unconnected:
        return f"shards {unconnected} are not CONNECTED"
    try:
        expected = shard_assignments(conninfo)
        broken = violations(conninfo)
    except Exception as error:  # Postgres may be coming back
        return f"Postgres does not answer: {error}"
    held = {n: s.instruments_assigned for n, s in statuses.items() if s.instruments_assigned}
    if held != expected:
        return f"the shards hold {held}, Postgres assigns {expected}"
    if broken:
        return f"invariants broken: {broken}"
    return ""


def healthy(stack: Stack, conninfo: str, timeout: float = HEALTHY_TIMEOUT_SECONDS) -> Stored:
    """Waits until every process serves, every shard is connected and holds what Postgres
    assigns it, and every invariant holds; then what Postgres stores."""
    reason = ["not checked yet"]

    def check() -> bool:
        reason[0] = _not_healthy(stack, conninfo)
        return not reason[0]

    until(check, timeout, lambda: f"the stack to be healthy: {reason[0]}")
    return stored(conninfo)


def assert_nothing_lost(before: Stored, after: Stored, baseline: Stored, added_items: Iterable[int] = ()) -> None:
    """Every subscription, owner and watchlist item stored before the fault is still there,
    unchanged (placement may change); only `added_items` are new; Tier B is as it started."""
    added = set(added_items)
    assert {k: v for k, v in after.items.items() if k not in added} == before.items, "watchlist items changed"
    new_owners = {o for o in after.owners if not (o[2] == "unit" and int(o[3]) in added)}
    assert new_owners == before.owners, (
        f"owners lost {sorted(before.owners - new_owners)[:5]}, gained {sorted(new_owners - before.owners)[:5]}"
    )
    lost = {k: v for k, v in before.subscriptions.items() if after.subscriptions.get(k) != v}
    if not added:
        assert lost == {} and after.subscriptions.keys() == before.subscriptions.keys(), (
            f"subscriptions changed: {lost}"
        )
    assert after.tier_b == baseline.tier_b, "the Tier B plan or its entries changed"
    assert after.tier_b_owners() == baseline.tier_b_owners(), "Tier B owners changed"


@dataclass
class Observed:
    """What one fault's test saw, for the test of what its terminal saw."""

    shard_id: int
    terminal: Terminal
    mark: int  # the terminal's position when the fault was injected
    notes: dict[str, Any] = field(default_factory=dict)


def kill_child(stack: Stack, name: str) -> int:
    process = child(stack, name)
    process.kill()  # SIGKILL
    return int(process.pid)


def pick_shard(db: str, preferred: int) -> int:
    """`preferred`, or the next shard after it that holds enough instruments to watch
    (placement depends on which shards were up when each instrument was placed)."""
    for shard in [(preferred + n) % SHARDS for n in range(SHARDS)]:
        if len(instruments_on(db, shard, MIN_TERMINAL_INSTRUMENTS)) == MIN_TERMINAL_INSTRUMENTS:
            return shard
    raise AssertionError(f"no shard holds {MIN_TERMINAL_INSTRUMENTS} instruments")


def open_terminal(stack: Stack, db: str, shard_id: int) -> Terminal:
    """A terminal streaming instruments of `shard_id`, ticking before the fault."""
    terminal = Terminal(stack.ports.gateway, instruments_on(db, shard_id, TERMINAL_INSTRUMENTS))
    snapshot = terminal.snapshot()
    assert {s.status for s in snapshot.instruments} == {feed_pb2.INSTRUMENT_STATUS_SUBSCRIBED}, snapshot.instruments
    terminal.wait_ticks(0, RECOVERY_SECONDS, "ticks before the fault")
    return terminal


def reconnected(stack: Stack, shard_id: int, old_connection: int | None, old_reconnects: int) -> bool:
    status = shard_status(stack, shard_id)
    new = feed_connection(stack, shard_id)
    return (
        new is not None
        and new != old_connection
        and status.connection_state == feed_pb2.CONNECTION_STATE_CONNECTED
        and status.reconnect_count > old_reconnects
    )


def status_in(stack: Stack, shard_id: int, state: int) -> feed_pb2.ShardStatus | None:
    status = shard_status(stack, shard_id)
    return status if status.connection_state == state else None


def records_of_shard(stack: Stack, msg: str, shard_id: int) -> list[dict[str, Any]]:
    return [r for r in stack.records(msg) if r.get("shard") == shard_id]


def stale_then_live(
    seen: Observed, cause: int, *, code: int = 0, restored_cause: int = feed_pb2.UPSTREAM_CAUSE_UNSPECIFIED
) -> tuple[Any, Any]:
    """The terminal's INTERRUPTED event for the shard (its instruments, with `cause`, a reason
    and the broker's `code`), then RESTORED, then live ticks; the two events."""
    terminal, shard = seen.terminal, seen.shard_id
    index, stale = terminal.wait_event(
        "upstream",
        lambda e: e.state == INTERRUPTED and e.shard_id == shard,
        RECOVERY_SECONDS,
        f"an INTERRUPTED event for shard {shard}",
        since=seen.mark,
    )
    assert stale.cause == cause, stale
    assert stale.reason, stale
    assert stale.disconnect_code == code, stale
    assert key_set(stale.instruments) == set(terminal.keys), stale
    assert stale.affected_instruments == len(terminal.keys), stale
    assert stale.HasField("interrupted_at"), stale
    after, live = terminal.wait_event(
        "upstream",
        lambda e: e.state == RESTORED and e.shard_id == shard,
        RECOVERY_SECONDS,
        f"a RESTORED event for shard {shard}",
        since=index,
    )
    assert live.cause == restored_cause, live
    assert key_set(live.instruments) == set(terminal.keys), live
    terminal.wait_ticks(after, RECOVERY_SECONDS, "live ticks after RESTORED")
    return stale, live


Chain = tuple[str, str, bool]  # (underlying symbol, expiry "YYYY-MM-DD" or "", underlying only)


def new_chains(db: str, count: int) -> list[Chain]:
    """Watchlist items nobody holds yet: option chains (stocks' first), then underlyings alone."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            """SELECT symbol, expiry, underlying_only FROM (
                   SELECT DISTINCT i.underlying_symbol AS symbol, i.expiry_date AS expiry, false AS underlying_only,
                          i.instrument_type <> 'OPTSTK' AS later
                   FROM instruments i JOIN master_versions m ON m.version = i.master_version AND m.active
                   WHERE i.instrument_type IN ('OPTSTK', 'OPTIDX', 'OPTFUT')
                   UNION
                   SELECT DISTINCT i.underlying_symbol, NULL::date, true, true
                   FROM instruments i JOIN master_versions m ON m.version = i.master_version AND m.active
                   WHERE i.instrument_type = 'OPTSTK'
               ) candidates
               WHERE NOT EXISTS (
                   SELECT 1 FROM watchlist_items w
                   WHERE w.symbol = candidates.symbol AND w.underlying_only = candidates.underlying_only
                     AND w.expiry_date IS NOT DISTINCT FROM candidates.expiry)
               ORDER BY underlying_only, later, expiry, symbol LIMIT %s""",
            (count,),
        ).fetchall()
    return [(symbol, expiry.isoformat() if expiry else "", only) for symbol, expiry, only in rows]


def add_item(port: int, chain: Chain) -> subscription_pb2.AddWatchlistItemResponse | grpc.RpcError:
    symbol, expiry, underlying_only = chain
    request = subscription_pb2.AddWatchlistItemRequest(
        symbol=symbol, expiry_date=expiry, underlying_only=underlying_only, strikes_each_side=2
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return subscription_pb2_grpc.SubscriptionServiceStub(channel).AddWatchlistItem(request, timeout=30)
        except grpc.RpcError as error:
            return error


def stored_chains(db: str, chains: list[Chain]) -> dict[Chain, list[tuple[int, str, int]]]:
    """The watchlist items stored for each chain: (item id, state, instrument count)."""
    found: dict[Chain, list[tuple[int, str, int]]] = {c: [] for c in chains}
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            """SELECT symbol, expiry_date, underlying_only, item_id, state, instrument_count FROM watchlist_items
               WHERE symbol = ANY(%s)""",
            ([c[0] for c in chains],),
        ).fetchall()
    for symbol, expiry, underlying_only, item_id, state, count in rows:
        chain = (symbol, expiry.isoformat() if expiry else "", underlying_only)
        if chain in found:
            found[chain].append((item_id, state, count))
    return found
