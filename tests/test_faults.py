"""The nine faults of issue 13 on `make run`'s stack, as real processes: each is injected
once, then the test asserts recovery, what health, metrics and logs say, that nothing
stored in Postgres is lost and every invariant holds (tests/stack_invariants.py).

What a terminal saw during each fault is asserted by its own `..._terminal_...` test, from
the stream the fault's test kept open (the contract: UpstreamStatusChange, WatchlistFollowing,
ServerDraining in protos/dataserver/feed/v1/feed.proto), so a fault is injected once.

Beside the nine, a connection down past FEED_FAILOVER_SECONDS has its instruments moved.
One stack for the module, with short timings (watchdog, back-offs) so the faults resolve in
seconds; the tests run in file order, and each first waits until the stack is healthy again."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import grpc
import pytest
from dataserver.feed.v1 import feed_pb2
from grpc_health.v1 import health_pb2

from services.common.keys import Key
from tests.fault_stack import (
    INTERRUPTED,
    RECOVERY_SECONDS,
    RESTORED,
    SHARDS,
    Chain,
    Observed,
    add_item,
    assert_nothing_lost,
    feed_connection,
    healthy,
    kill_child,
    new_chains,
    open_terminal,
    pick_shard,
    reconnected,
    records_of_shard,
    shard_status,
    shard_usage,
    simulator,
    stale_then_live,
    status_in,
    stored_chains,
)
from tests.stack_fixtures import (
    Stack,
    alive,
    child,
    child_or_none,
    database_url,
    free_offset,
    health_status,
    metric_values,
    postmaster_pid,
    running_stack,
    serving,
    until,
    watchlist_answers,
)
from tests.stack_invariants import (
    Stored,
    instruments_on,
    last_audit_id,
    moves_started,
    shard_assignments,
    violations,
)
from tests.stack_terminal import Terminal, key_set

OFFSET = free_offset(3300)
# Short timings so that each fault resolves in seconds (the stack passes its environment on).
ENVIRONMENT = {
    "FEED_WATCHDOG_SECONDS": "3",
    "FEED_KICKED_BACKOFF_SECONDS": "3",
    "FEED_MAX_BACKOFF_SECONDS": "2",
    # Re-centring would change chains (Tier B's included) while the faults run.
    "SCHEDULER_DISABLED_JOBS": "recenter_chains",
}
FAILOVER_SECONDS = 20.0  # FEED_FAILOVER_SECONDS's default: longer than any other fault here lasts
OBSERVED: dict[str, Observed] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("faults"), OFFSET, ENVIRONMENT) as stack:
        assert "dataserver is up" in stack.banner, stack.banner
        yield stack
        for seen in OBSERVED.values():
            seen.terminal.close()
        OBSERVED.clear()


@pytest.fixture(scope="module")
def db(stack: Stack) -> str:
    return database_url(stack)


@pytest.fixture(scope="module")
def baseline(stack: Stack, db: str) -> Stored:
    """What Postgres holds once the stack first is healthy (Tier B preloaded)."""
    return healthy(stack, db)


@pytest.fixture
def before(stack: Stack, db: str, baseline: Stored) -> Stored:
    """The stack healthy again after the previous fault; what Postgres holds now."""
    return healthy(stack, db)


@contextlib.contextmanager
def refused_by_the_broker(stack: Stack, shard_id: int, code: int) -> Iterator[None]:
    """The broker refuses the shard's account with `code` (806-810): the shard stops and waits
    for a new token. On the way out the shard is restarted (it starts with its configured
    token; tests/test_token_rotation.py resumes one by rotating instead), also when the test
    failed, so that later faults find a whole stack."""
    connection = feed_connection(stack, shard_id)
    reply = simulator(stack, "POST", f"/connections/{connection}/disconnect", {"reason": code})
    assert reply["affected"] == [connection], reply
    try:
        yield
    finally:
        child(stack, f"shard-{shard_id}").send_signal(signal.SIGTERM)


def observed(name: str) -> Observed:
    seen = OBSERVED.get(name)
    if seen is None:
        pytest.skip(f"the {name} fault's test did not get as far as its terminal")
    return seen


# -- 1. the simulator drops a connection -------------------------------------------------------


def test_a_dropped_connection_is_reopened_and_ticks_resume(stack: Stack, db: str, before: Stored) -> None:
    shard = pick_shard(db, 0)
    terminal = open_terminal(stack, db, shard)
    connection, reconnects = feed_connection(stack, shard), shard_status(stack, shard).reconnect_count
    seen = OBSERVED["drop"] = Observed(shard, terminal, terminal.mark())
    assert simulator(stack, "POST", f"/connections/{connection}/drop")["affected"] == [connection]

    until(lambda: reconnected(stack, shard, connection, reconnects), RECOVERY_SECONDS, f"shard {shard} to reconnect")
    terminal.wait_ticks(seen.mark, RECOVERY_SECONDS, "ticks after the reconnect")
    assert_nothing_lost(before, healthy(stack, db), before)


def test_a_dropped_connection_terminal_sees_stale_then_live(stack: Stack) -> None:
    stale, _ = stale_then_live(observed("drop"), feed_pb2.UPSTREAM_CAUSE_RECONNECTING)
    assert not stale.shard_restarted


# -- 2. the simulator goes silent past the watchdog --------------------------------------------


def test_a_silent_connection_is_replaced_by_the_watchdog_without_an_805(stack: Stack, db: str, before: Stored) -> None:
    shard = pick_shard(db, 1)
    terminal = open_terminal(stack, db, shard)
    connection, reconnects = feed_connection(stack, shard), shard_status(stack, shard).reconnect_count
    disconnects = simulator(stack)["disconnects_sent"]
    seen = OBSERVED["silence"] = Observed(shard, terminal, terminal.mark())
    assert simulator(stack, "POST", f"/connections/{connection}/silence")["affected"] == [connection]

    until(
        lambda: records_of_shard(stack, "feed silent; forcing a reconnect", shard),
        RECOVERY_SECONDS,
        "the watchdog's warning",
    )
    until(lambda: reconnected(stack, shard, connection, reconnects), RECOVERY_SECONDS, f"shard {shard} to reconnect")
    terminal.wait_ticks(seen.mark, RECOVERY_SECONDS, "ticks after the reconnect")
    assert_nothing_lost(before, healthy(stack, db), before)
    # The shard closed its silent socket before opening another: nobody was kicked (§2).
    assert simulator(stack)["disconnects_sent"] == disconnects


def test_a_silent_connection_terminal_sees_stale_then_live(stack: Stack) -> None:
    stale_then_live(observed("silence"), feed_pb2.UPSTREAM_CAUSE_SILENT)


# -- 3. the simulator sends 805 ----------------------------------------------------------------


def test_an_805_backs_off_then_reconnects(stack: Stack, db: str, before: Stored) -> None:
    shard = pick_shard(db, 2)
    terminal = open_terminal(stack, db, shard)
    connection, reconnects = feed_connection(stack, shard), shard_status(stack, shard).reconnect_count
    sent = simulator(stack)["disconnects_sent"].get("805", 0)
    seen = OBSERVED["805"] = Observed(shard, terminal, terminal.mark())
    assert simulator(stack, "POST", f"/connections/{connection}/disconnect", {"reason": 805})["affected"] == [
        connection
    ]

    backing_off = until(
        lambda: status_in(stack, shard, feed_pb2.CONNECTION_STATE_BACKING_OFF),
        RECOVERY_SECONDS,
        f"shard {shard} to back off",
    )
    seen.notes["backing_off"] = backing_off
    assert backing_off.last_disconnect_code == 805, backing_off
    assert "too many connections" in backing_off.last_disconnect_reason, backing_off
    assert backing_off.HasField("next_retry_at"), backing_off
    assert records_of_shard(stack, "feed disconnected us with 805 (too many connections); backing off", shard)
    until(lambda: reconnected(stack, shard, connection, reconnects), RECOVERY_SECONDS, f"shard {shard} to reconnect")
    reconnects_805 = metric_values(stack.ports.shard_metrics(shard), "feed_shard_reconnects_total")
    assert reconnects_805.get(f'{{reason="805",shard="{shard}"}}') == 1.0, reconnects_805
    terminal.wait_ticks(seen.mark, RECOVERY_SECONDS, "ticks after the reconnect")
    assert_nothing_lost(before, healthy(stack, db), before)
    assert simulator(stack)["disconnects_sent"].get("805", 0) == sent + 1, "one 805: ours"


def test_an_805_terminal_sees_kicked_then_live_and_status_says_why(stack: Stack) -> None:
    seen = observed("805")
    backing_off = seen.notes["backing_off"]
    assert backing_off.interruption_cause == feed_pb2.UPSTREAM_CAUSE_KICKED, backing_off
    assert backing_off.HasField("interrupted_at"), backing_off
    stale, _ = stale_then_live(seen, feed_pb2.UPSTREAM_CAUSE_KICKED, code=805)
    assert "805" in stale.reason, stale


# -- 4. the simulator sends 807 ----------------------------------------------------------------


def test_an_807_stops_the_shard_without_retrying_and_says_why(stack: Stack, db: str, before: Stored) -> None:
    shard = pick_shard(db, 3)
    terminal = open_terminal(stack, db, shard)
    seen = OBSERVED["807"] = Observed(shard, terminal, terminal.mark())
    with refused_by_the_broker(stack, shard, 807):
        stopped = until(
            lambda: status_in(stack, shard, feed_pb2.CONNECTION_STATE_STOPPED),
            RECOVERY_SECONDS,
            f"shard {shard} to stop",
        )
        seen.notes["stopped"] = stopped
        assert stopped.last_disconnect_code == 807 and "access token expired" in stopped.last_disconnect_reason, stopped
        until(
            lambda: health_status(stack.ports.shard(shard)) == health_pb2.HealthCheckResponse.NOT_SERVING,
            RECOVERY_SECONDS,
            f"shard {shard}'s health to turn NOT_SERVING",
        )
        refused = records_of_shard(
            stack, "feed refused us; waiting for the account's access token to be replaced", shard
        )
        assert [r["reason_code"] for r in refused] == [807], refused
        # No retry storm: while another shard's connection is dropped and reopened twice (each
        # after a back-off), the simulator sees exactly those two handshakes.
        handshakes = simulator(stack)["handshakes"]
        other = next(s for s in range(5) if s != shard and feed_connection(stack, s) is not None)
        for _ in range(2):
            dropped, reconnects = feed_connection(stack, other), shard_status(stack, other).reconnect_count
            simulator(stack, "POST", f"/connections/{dropped}/drop")
            until(partial(reconnected, stack, other, dropped, reconnects), RECOVERY_SECONDS, f"shard {other} back")
        assert simulator(stack)["handshakes"] == handshakes + 2, "the stopped shard reconnected"
        assert feed_connection(stack, shard) is None
        assert (
            metric_values(stack.ports.shard_metrics(shard), "feed_shard_reconnects_total").get(
                f'{{reason="807",shard="{shard}"}}'
            )
            == 1.0
        )
        assert serving(stack.ports.gateway), "the other shards' ticks flow: the gateway serves"
        seen.notes["usage"] = shard_usage(stack)[shard]
    until(lambda: serving(stack.ports.shard(shard)), RECOVERY_SECONDS, f"the restarted shard {shard} to serve")
    assert_nothing_lost(before, healthy(stack, db), before)


def test_an_807_terminal_sees_stopped_with_the_code_and_health_says_why(stack: Stack) -> None:
    seen = observed("807")
    stopped = seen.notes["stopped"]
    assert stopped.interruption_cause == feed_pb2.UPSTREAM_CAUSE_STOPPED, stopped
    usage = seen.notes["usage"]
    assert not usage.connected and "807" in usage.down_reason, usage
    stale, live = stale_then_live(seen, feed_pb2.UPSTREAM_CAUSE_STOPPED, code=807)
    assert "807" in stale.reason, stale
    assert live.shard_restarted, live


# -- 3/4 and failover: a connection down past FEED_FAILOVER_SECONDS ------------------------------


def test_a_shard_down_past_the_failover_time_has_its_instruments_moved(stack: Stack, db: str, before: Stored) -> None:
    shard = pick_shard(db, 0)
    terminal = open_terminal(stack, db, shard)
    placed = set(instruments_on(db, shard, 5000))
    audited = last_audit_id(db)
    OBSERVED["failover"] = Observed(shard, terminal, terminal.mark())
    with refused_by_the_broker(stack, shard, 807):
        until(lambda: status_in(stack, shard, feed_pb2.CONNECTION_STATE_STOPPED), RECOVERY_SECONDS, "the shard to stop")
        until(
            lambda: metric_values(stack.ports.subscription_metrics, "subscription_shards_down").get("") == 1.0,
            RECOVERY_SECONDS,
            "the subscription service to count the shard down",
        )
        # Make-before-break: every instrument leaves for a live shard with room, none is lost.
        until(
            lambda: not shard_assignments(db).get(shard),
            FAILOVER_SECONDS + RECOVERY_SECONDS,
            f"shard {shard}'s instruments to move to live shards",
        )
        assert violations(db) == {}
        reasons = moves_started(db, shard, audited)
        assert set(reasons) == placed, "an audit entry for each move"
        assert all(r.startswith(f"failover: shard {shard} down since") and "807" in r for r in reasons.values()), (
            reasons
        )
        usage = shard_usage(stack)[shard]
        assert usage.instrument_count == 0 and not usage.connected and "807" in usage.down_reason, usage
        terminal.wait_ticks(terminal.mark(), RECOVERY_SECONDS, "ticks from the shards the instruments moved to")
    until(lambda: serving(stack.ports.shard(shard)), RECOVERY_SECONDS, f"the restarted shard {shard} to serve")
    assert_nothing_lost(before, healthy(stack, db), before)


def test_a_shard_down_past_the_failover_time_terminal_sees_its_instruments_moved(stack: Stack) -> None:
    seen = observed("failover")
    terminal = seen.terminal
    _, stale = terminal.wait_event(
        "upstream", lambda e: e.state == INTERRUPTED, RECOVERY_SECONDS, "INTERRUPTED", since=seen.mark
    )
    assert stale.cause == feed_pb2.UPSTREAM_CAUSE_STOPPED and stale.disconnect_code == 807, stale
    moved: set[Key] = set()
    for _, event in terminal.events("upstream", seen.mark):
        if event.state == RESTORED:
            assert event.cause == feed_pb2.UPSTREAM_CAUSE_MOVED, event
            moved |= key_set(event.instruments)
    assert moved == set(terminal.keys), "RESTORED, MOVED, for every instrument of the stream"


# -- 5. the simulator sends garbage ------------------------------------------------------------


def _protocol_errors(stack: Stack, shard_id: int) -> float:
    samples = metric_values(stack.ports.shard_metrics(shard_id), "feed_shard_protocol_errors_total")
    return sum(v for labels, v in samples.items() if f'shard="{shard_id}"' in labels)


def test_garbage_is_counted_and_logged_and_the_stream_keeps_going(stack: Stack, db: str, before: Stored) -> None:
    shard = pick_shard(db, 4)
    terminal = open_terminal(stack, db, shard)
    connection, status = feed_connection(stack, shard), shard_status(stack, shard)
    counted = _protocol_errors(stack, shard)
    mark = terminal.mark()
    body = {"bytes": 64, "count": 20}
    assert simulator(stack, "POST", f"/connections/{connection}/garbage", body)["affected"] == [connection]

    until(lambda: _protocol_errors(stack, shard) > counted, RECOVERY_SECONDS, "the protocol-error metric to count")
    until(
        lambda: shard_status(stack, shard).protocol_errors > status.protocol_errors,
        RECOVERY_SECONDS,
        "the shard's status to count protocol errors",
    )
    logged = until(
        lambda: records_of_shard(stack, "bytes from the feed that are no packet; dropped", shard),
        RECOVERY_SECONDS,
        "a warning about the garbage",
    )
    assert logged[0]["level"] == "WARNING" and logged[0]["dropped"] >= 1, logged
    terminal.wait_ticks(terminal.mark(), RECOVERY_SECONDS, "ticks after the garbage")
    # The same connection carries on: garbage is dropped, not a reason to reconnect.
    assert feed_connection(stack, shard) == connection
    assert shard_status(stack, shard).reconnect_count == status.reconnect_count
    assert [e for _, e in terminal.events("upstream", mark) if e.shard_id == shard] == []
    assert_nothing_lost(before, healthy(stack, db), before)
    terminal.close()


# -- 6. kill -9 of a shard process -------------------------------------------------------------


def test_a_killed_shard_is_restarted_and_all_five_serve_within_20_s(stack: Stack, db: str, before: Stored) -> None:
    shard = pick_shard(db, 1)
    terminal = open_terminal(stack, db, shard)
    epoch = shard_status(stack, shard).shard_epoch
    seen = OBSERVED["kill shard"] = Observed(shard, terminal, terminal.mark())
    pid = kill_child(stack, f"shard-{shard}")
    killed_at = time.monotonic()

    until(
        lambda: all(serving(stack.ports.shard(n)) for n in range(SHARDS)) and child(stack, f"shard-{shard}").pid != pid,
        20,
        "all five shards to be SERVING again",
    )
    assert time.monotonic() - killed_at < 20
    assert stack.process.poll() is None, "the stack stays up"
    assert serving(stack.ports.gateway)
    restart = next(r for r in stack.records("restarting") if r.get("child") == f"shard-{shard}")
    assert restart["exit_status"] == -9 and restart["reason"] == "killed by SIGKILL", restart
    # Its instruments come back: on its new epoch, the same assignment, ticking.
    until(
        lambda: (
            (s := shard_status(stack, shard)).shard_epoch not in ("", epoch)
            and s.connection_state == feed_pb2.CONNECTION_STATE_CONNECTED
        ),
        RECOVERY_SECONDS,
        f"the gateway to see shard {shard}'s new epoch connected",
    )
    terminal.wait_ticks(seen.mark, RECOVERY_SECONDS, "ticks from the restarted shard")
    assert_nothing_lost(before, healthy(stack, db), before)


def test_a_killed_shard_terminal_sees_unreachable_then_live(stack: Stack) -> None:
    _, live = stale_then_live(observed("kill shard"), feed_pb2.UPSTREAM_CAUSE_SHARD_UNREACHABLE)
    assert live.shard_restarted, live


# -- 7. kill -9 of the subscription service during 20 concurrent adds ---------------------------


def test_a_killed_subscription_service_leaves_each_concurrent_add_committed_or_failed(
    stack: Stack, db: str, before: Stored
) -> None:
    chains = new_chains(db, 20)
    assert len(chains) == 20, chains
    terminal = Terminal(stack.ports.gateway, None)  # "my watchlist"
    terminal.snapshot()
    terminal.wait_ticks(0, RECOVERY_SECONDS, "ticks before the fault")
    seen = OBSERVED["kill subscription"] = Observed(-1, terminal, terminal.mark())
    replies: dict[Chain, Any] = {}
    threads = [
        threading.Thread(target=lambda c=c: replies.__setitem__(c, add_item(stack.ports.subscription, c)))
        for c in chains
    ]
    for thread in threads:
        thread.start()
    # Killed once the first add has committed, while the others are in flight.
    until(lambda: any(stored_chains(db, chains).values()), RECOVERY_SECONDS, "the first add to commit")
    pid = kill_child(stack, "subscription")
    for thread in threads:
        thread.join(timeout=60)
    failed = {c for c, r in replies.items() if isinstance(r, grpc.RpcError)}
    assert len(replies) == 20 and failed, f"the kill fell during the adds: {len(failed)} of them failed"
    assert {r.code() for c, r in replies.items() if c in failed} <= {grpc.StatusCode.UNAVAILABLE}, replies

    until(
        lambda: getattr(child_or_none(stack, "subscription"), "pid", pid) != pid and serving(stack.ports.subscription),
        RECOVERY_SECONDS,
        "the subscription service to be restarted",
    )
    # Each add committed whole or not at all; a committed one is what its reply said.
    stored_items = stored_chains(db, chains)
    for chain, reply in replies.items():
        if chain not in failed:
            assert stored_items[chain] == [
                (int(reply.watchlist_item.item_id), "ACTIVE", reply.watchlist_item.instrument_count)
            ]
        else:
            assert len(stored_items[chain]) <= 1 and all(s == "ACTIVE" for _, s, _ in stored_items[chain])
    healthy(stack, db)  # the invariants: no half-committed unit, refcounts equal owners
    # Retries are safe: the failed adds succeed, and adding everything again changes nothing.
    for chain in failed:
        reply = add_item(stack.ports.subscription, chain)
        assert not isinstance(reply, grpc.RpcError), reply
        assert reply.created == (not stored_items[chain]), (chain, reply)
    items = stored_chains(db, chains)
    for chain in chains:
        again = add_item(stack.ports.subscription, chain)
        assert not isinstance(again, grpc.RpcError) and not again.created, again
        assert [int(again.watchlist_item.item_id)] == [i for i, _, _ in items[chain]], (chain, items[chain])
    added = [i for found in items.values() for i, _, _ in found]
    assert_nothing_lost(before, healthy(stack, db), before, added_items=added)
    seen.notes["added"] = added


def test_a_killed_subscription_service_terminal_keeps_ticking_and_pauses_following(stack: Stack) -> None:
    seen = observed("kill subscription")
    terminal = seen.terminal
    paused, event = terminal.wait_event(
        "watchlist_following",
        lambda e: e.state == feed_pb2.WATCHLIST_FOLLOWING_STATE_PAUSED,
        RECOVERY_SECONDS,
        "watchlist following PAUSED",
        since=seen.mark,
    )
    assert event.reason, event
    resumed, _ = terminal.wait_event(
        "watchlist_following",
        lambda e: e.state == feed_pb2.WATCHLIST_FOLLOWING_STATE_RESUMED,
        RECOVERY_SECONDS,
        "watchlist following RESUMED",
        since=paused,
    )
    assert not terminal.done.is_set(), f"the stream ended: {terminal.ended}"
    terminal.wait_ticks(resumed, RECOVERY_SECONDS, "ticks after RESUMED")
    # It caught up: every item added around the outage reached it as a watchlist event.
    added = {str(i) for i in seen.notes["added"]}
    until(
        lambda: added <= {e.watchlist_item.item_id for _, e in terminal.events("watchlist", seen.mark)},
        RECOVERY_SECONDS,
        "a watchlist event for every added item",
    )


# -- 8. Postgres stopped (fast shutdown) and started --------------------------------------------


def test_postgres_fast_shutdown_and_start_services_recover_by_themselves(stack: Stack, db: str, before: Stored) -> None:
    terminal = Terminal(stack.ports.gateway, None)
    terminal.snapshot()
    terminal.wait_ticks(0, RECOVERY_SECONDS, "ticks before the fault")
    seen = OBSERVED["postgres"] = Observed(-1, terminal, terminal.mark())
    chain = new_chains(db, 1)[0]
    postmaster = postmaster_pid(stack)
    os.kill(postmaster, signal.SIGINT)  # Postgres's fast shutdown
    until(lambda: not alive(postmaster), RECOVERY_SECONDS, "Postgres to stop")
    started = time.monotonic()
    seen.notes["add while down"] = (add_item(stack.ports.subscription, chain), time.monotonic() - started)

    restart = until(
        lambda: next((r for r in stack.records("restarting") if r.get("child") == "postgres"), None),
        RECOVERY_SECONDS,
        "the stack to restart Postgres",
    )
    assert "is gone" in restart["reason"], restart
    until(lambda: watchlist_answers(stack.ports.subscription), 60, "the subscription service to read Postgres again")
    until(
        lambda: not isinstance(add_item(stack.ports.subscription, chain), grpc.RpcError),
        60,
        "an add to commit again",
    )
    after = healthy(stack, db)
    added = [i for i, _, _ in stored_chains(db, [chain])[chain]]
    assert_nothing_lost(before, after, before, added_items=added)
    # Ticks never needed Postgres: the stream stayed open and ticking.
    assert not terminal.done.is_set(), f"the stream ended: {terminal.ended}"
    terminal.wait_ticks(seen.mark, RECOVERY_SECONDS, "ticks through the outage")


def test_postgres_down_a_database_call_fails_fast_with_unavailable(stack: Stack) -> None:
    reply, seconds = observed("postgres").notes["add while down"]
    # Succeeded once Postgres was back, or refused at once as UNAVAILABLE: never a hang.
    if isinstance(reply, grpc.RpcError):
        assert reply.code() == grpc.StatusCode.UNAVAILABLE, reply
    assert seconds < 10, f"the call took {seconds:.1f} s"


# -- 9. SIGTERM to the gateway ------------------------------------------------------------------


def _watch_health(port: int, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    while not stop.is_set():
        samples.append((time.monotonic(), health_status(port)))
        time.sleep(0.05)


def test_a_gateway_told_to_stop_ends_its_streams_and_is_restarted(stack: Stack, db: str, before: Stored) -> None:
    terminal = open_terminal(stack, db, 0)
    seen = OBSERVED["gateway"] = Observed(0, terminal, terminal.mark())
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_health, args=(stack.ports.gateway, samples, stop), daemon=True)
    watcher.start()
    gateway = child(stack, "gateway")
    gateway.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    until(terminal.done.is_set, RECOVERY_SECONDS, "the stream to end")
    seen.notes.update(ended_after=terminal.ended_at - signalled, health=samples)
    restart = until(
        lambda: next((r for r in stack.records("restarting") if r.get("child") == "gateway"), None),
        RECOVERY_SECONDS,
        "the stack to restart the gateway",
    )
    assert restart["exit_status"] == 0, restart
    until(lambda: serving(stack.ports.gateway), RECOVERY_SECONDS, "the restarted gateway to serve")
    stop.set()
    watcher.join()
    assert child(stack, "gateway").pid != gateway.pid
    # A terminal reconnects and streams again.
    with open_terminal(stack, db, 0):
        pass
    assert_nothing_lost(before, healthy(stack, db), before)


def test_a_gateway_told_to_stop_drains_its_streams_with_unavailable(stack: Stack) -> None:
    seen = observed("gateway")
    terminal = seen.terminal
    drains = terminal.events("draining", seen.mark)
    assert len(drains) == 1, terminal.describe_events(seen.mark)
    index, draining = drains[0]
    assert draining.reason and draining.HasField("deadline"), draining
    assert index == len(terminal.received) - 1 or all(
        r.message.WhichOneof("body") != "event" or r.message.event.WhichOneof("event") != "upstream"
        for r in terminal.received[index + 1 :]
    ), "the draining event is the stream's last word"
    assert terminal.ended is not None and terminal.ended.code() == grpc.StatusCode.UNAVAILABLE, terminal.ended
    assert "draining" in (terminal.ended.details() or ""), terminal.ended.details()
    assert seen.notes["ended_after"] <= draining.deadline.ToTimedelta().total_seconds() + 5, seen.notes
    statuses = [status for _, status in seen.notes["health"]]
    first_down = next(i for i, s in enumerate(statuses) if s != health_pb2.HealthCheckResponse.SERVING)
    assert statuses[first_down] == health_pb2.HealthCheckResponse.NOT_SERVING, "health turns NOT_SERVING first"
