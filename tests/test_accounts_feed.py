"""Two accounts on the feed side: `make run`'s plan for FEED_ACCOUNTS=2 (ten shards on distinct
ports, a simulator that knows both client ids), and the simulator's Dhan limits per client id."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedOK

from services.common.accounts import simulated_account
from services.common.config import load_settings
from services.dhan import DisconnectPacket, FeedMode, PrevClosePacket
from services.stack.__main__ import Process, feed_summary, plan
from simulator.__main__ import parse_args
from tests.test_simulator import NIFTY, Client, catalog, start_sim, wait_for

__all__ = ["catalog", "start_sim"]  # fixtures used here, defined with the simulator's tests


def _ports(process: Process) -> list[int]:
    feed = [process.http_health_port - 1] if process.http_health_port else []
    return [p for p in (process.grpc_port, process.metrics_port, process.http_health_port, *feed) if p]


def test_the_stack_plan_for_two_accounts_runs_ten_shards_on_distinct_ports() -> None:
    settings = load_settings({"FEED_ACCOUNTS": "2", "STACK_PORT_OFFSET": "100"})
    processes = plan(settings)
    shards = [p for p in processes if p.name.startswith("shard-")]
    assert [dict(p.env)["SHARD_ID"] for p in shards] == [str(n) for n in range(10)]
    ports = [port for p in processes for port in _ports(p)]
    assert len(ports) == len(set(ports)), sorted(ports)
    gateway = next(p for p in processes if p.name == "gateway")
    assert dict(gateway.env)["GATEWAY_SHARD_ADDRS"].split(",") == [f"127.0.0.1:{p.grpc_port}" for p in shards]
    simulator = next(p for p in processes if p.name == "simulator")
    client_ids = simulator.argv[simulator.argv.index("--client-ids") + 1].split(",")
    assert client_ids == [simulated_account(1).client_id, simulated_account(2).client_id]
    known = parse_args(list(simulator.argv[3:])).valid_client_ids
    assert known == frozenset(client_ids) == parse_args(["--accounts", "2"]).valid_client_ids
    assert feed_summary(settings) == (
        "2 accounts (sim-1, sim-2) x 5 connections = 10 shards, capacity 50,000 instruments"
    )
    # Each shard connects as its own account: connections 0..4 of sim-1, then of sim-2.
    places = [load_settings({"FEED_ACCOUNTS": "2", **dict(p.env)}).shard_place() for p in shards]
    assert [(pl.account.account_id, pl.connection_index) for pl in places] == [
        (f"sim-{1 + n // 5}", n % 5) for n in range(10)
    ]


def test_the_largest_plan_keeps_every_port_distinct() -> None:
    processes = plan(load_settings({"FEED_ACCOUNTS": "20", "STACK_PORT_OFFSET": "10000"}))
    assert sum(p.name.startswith("shard-") for p in processes) == 100
    ports = [port for p in processes for port in _ports(p)]
    assert len(ports) == len(set(ports)) and max(ports) <= 65535


async def test_the_simulator_limits_connections_per_client_id(start_sim: Any) -> None:
    """Two client ids x 5 connections are all served; a sixth for one id kicks that id's oldest
    with 805 and leaves the other id's five alone; an id the simulator does not know gets 810."""
    first, second = simulated_account(1).client_id, simulated_account(2).client_id
    async with start_sim(valid_client_ids=parse_args(["--accounts", "2"]).valid_client_ids) as sim:
        async with AsyncExitStack() as stack:
            clients: dict[str, list[Client]] = {first: [], second: []}
            for client_id in (first, second):
                for _ in range(5):
                    clients[client_id].append(
                        await stack.enter_async_context(Client.open(sim.url(client_id=client_id)))
                    )
            await wait_for(lambda: len(sim.connections()) == 10)
            for client in clients[first] + clients[second]:
                await client.subscribe([NIFTY], FeedMode.TICKER)
                assert isinstance((await client.packets(1))[0], PrevClosePacket)
            oldest = min(c.id for c in sim.connections() if c.client_id == first)
            sixth = await stack.enter_async_context(Client.open(sim.url(client_id=first)))
            packets, closed = await clients[first][0].closed()
            assert packets[-1] == DisconnectPacket(0, 0, 805) and isinstance(closed, ConnectionClosedOK)
            await wait_for(lambda: oldest not in {c.id for c in sim.connections()})
            by_id = [c.client_id for c in sim.connections()]
            assert (by_id.count(first), by_id.count(second), len(by_id)) == (5, 5, 10)
            await sixth.subscribe([NIFTY], FeedMode.TICKER)
            assert isinstance((await sixth.packets(1))[0], PrevClosePacket)
            for client in clients[second]:  # still open, still ticking
                await client.until(lambda packet: not isinstance(packet, PrevClosePacket))
            async with Client.open(sim.url(client_id=simulated_account(3).client_id)) as unknown:
                packets, _ = await unknown.closed()
                assert packets == [DisconnectPacket(0, 0, 810)]


@pytest.mark.parametrize("argv", [["--accounts", "0"], ["--accounts", "2", "--client-ids", "1"]])
def test_the_simulator_refuses_a_bad_accounts_option(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
