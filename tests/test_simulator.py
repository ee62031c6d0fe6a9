"""The Dhan feed simulator over real WebSocket connections on loopback: URL auth, requests,
limits, keepalive, faults and the HTTP control API. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)
from websockets.frames import Frame, Opcode

from services.dhan import (
    DisconnectPacket,
    FeedMode,
    FullPacket,
    OIPacket,
    Packet,
    PrevClosePacket,
    ProtocolErrors,
    QuotePacket,
    TickerPacket,
    build_disconnect,
    build_subscribe_messages,
    build_unsubscribe_messages,
    decode_frame,
    depth_levels,
)
from simulator import Simulator, SimulatorSettings
from simulator.catalog import Catalog
from simulator.market import Book
from tests.feed_fixtures import eventually

TIMEOUT = 5.0
NIFTY, RELIANCE = ("IDX_I", 13), ("NSE_EQ", 2885)


@pytest.fixture(scope="module")
def catalog(masters_dir: Path) -> Catalog:
    return Catalog.generated(masters_dir, seed=7, scale="small")


@pytest.fixture(scope="module")
def nifty_option(catalog: Catalog) -> tuple[str, int]:
    return next(c.key for c in catalog.contracts() if c.kind == "option" and c.underlying == "NIFTY")


BASE = SimulatorSettings(port=0, control_port=0, ticks_per_second=20.0, seed=1, ping_interval=10.0, close_timeout=1.0)


@pytest.fixture
def start_sim(catalog: Catalog) -> Callable[..., Any]:
    """start_sim(**overrides) -> async context manager yielding a started Simulator."""

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Simulator]:
        sim = Simulator(replace(BASE, **overrides), catalog=catalog)
        await sim.start()
        try:
            yield sim
        finally:
            await asyncio.wait_for(sim.stop(), 10)

    return run


class PingRecorder(ClientConnection):
    """A client connection that notes when the server's pings arrive (websockets answers
    them in its protocol layer, which the public API does not expose)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pings: list[float] = []

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings.append(time.monotonic())
        super().process_event(event)


class Client:
    """A minimal feed client: one WebSocket, frames decoded with the codec."""

    def __init__(self, ws: PingRecorder) -> None:
        self.ws = ws
        self.errors = ProtocolErrors()
        self.frame_sizes: list[int] = []

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, **kwargs: Any) -> AsyncIterator[Client]:
        kwargs.setdefault("ping_interval", None)  # the server's keepalive is under test
        async with connect(url, create_connection=PingRecorder, open_timeout=TIMEOUT, close_timeout=1, **kwargs) as ws:
            yield cls(ws)  # type: ignore[arg-type]

    async def subscribe(self, instruments: list[tuple[str, int]], mode: FeedMode) -> None:
        for message in build_subscribe_messages(instruments, mode):
            await self.ws.send(message)

    async def frame(self, timeout: float = TIMEOUT) -> list[Packet]:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes), "the server sends binary frames only"
        self.frame_sizes.append(len(data))
        return decode_frame(data, self.errors)

    async def packets(self, count: int, timeout: float = TIMEOUT) -> list[Packet]:
        out: list[Packet] = []
        async with asyncio.timeout(timeout):
            while len(out) < count:
                out += await self.frame()
        return out

    async def until(self, predicate: Callable[[Packet], bool], timeout: float = TIMEOUT) -> list[Packet]:
        """Packets up to and including the first that matches."""
        out: list[Packet] = []
        async with asyncio.timeout(timeout):
            while True:
                for packet in await self.frame():
                    out.append(packet)
                    if predicate(packet):
                        return out

    async def closed(self, timeout: float = TIMEOUT) -> tuple[list[Packet], ConnectionClosed]:
        """Reads until the connection closes; the packets read and the closing exception."""
        out: list[Packet] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    out += await self.frame(timeout)
                except ConnectionClosed as closed:
                    return out, closed


async def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (the condition is the simulator's state, with no event to await)
            await asyncio.sleep(0.01)


async def http(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One request to the control API with urllib (in a thread: it blocks)."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)

    def call() -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    return await asyncio.to_thread(call)


def url(sim: Simulator, query: str) -> str:
    return f"ws://127.0.0.1:{sim.ws_port}/{query}"


# --- auth --------------------------------------------------------------------------


async def test_valid_credentials_connect_and_stay_up(start_sim: Any) -> None:
    async with start_sim(valid_tokens=frozenset({"good"}), valid_client_ids=frozenset({"C1"})) as sim:
        async with Client.open(sim.url(token="good", client_id="C1")) as client:
            await client.subscribe([RELIANCE], FeedMode.TICKER)
            (prev, *_) = await client.packets(1)
            assert isinstance(prev, PrevClosePacket) and prev.security_id == 2885
            [info] = sim.connections()
            assert info.client_id == "C1" and info.state == "open"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("?version=2&token=bad&clientId=C1&authType=2", 809),  # token not among valid_tokens
        ("?version=2&clientId=C1&authType=2", 808),  # no token at all
        ("?version=2&token=&clientId=C1&authType=2", 808),
        ("?version=2&token=old&clientId=C1&authType=2", 807),  # configured as expired
        ("?version=2&token=good&clientId=C2&authType=2", 810),  # unknown client id
        ("?version=2&token=good&authType=2", 810),
        ("?version=2&token=good&clientId=C1&authType=1", 808),
        ("?token=good&clientId=C1&authType=2", 814),  # no version=2
        ("?version=1&token=good&clientId=C1&authType=2", 814),
    ],
)
async def test_refused_connections_get_the_disconnect_reason_then_a_close(
    start_sim: Any, query: str, reason: int
) -> None:
    settings = {
        "valid_tokens": frozenset({"good"}),
        "valid_client_ids": frozenset({"C1"}),
        "expired_tokens": frozenset({"old"}),
    }
    async with start_sim(**settings) as sim:
        async with Client.open(url(sim, query)) as client:
            packets, closed = await client.closed()
        assert packets == [DisconnectPacket(0, 0, reason)]
        assert isinstance(closed, ConnectionClosedOK) and closed.rcvd is not None and closed.rcvd.code == 1000
        assert sim.connections() == []


async def test_any_non_empty_token_is_accepted_by_default(start_sim: Any) -> None:
    async with start_sim() as sim:
        async with Client.open(sim.url(token="whatever", client_id="anyone")) as client:
            await client.subscribe([NIFTY], FeedMode.TICKER)
            assert isinstance((await client.packets(1))[0], PrevClosePacket)


# --- requests and ticks ---------------------------------------------------------------


async def test_full_subscription_sends_prev_closes_then_full_packets_one_per_frame(
    start_sim: Any, nifty_option: tuple[str, int]
) -> None:
    wanted = [NIFTY, RELIANCE, nifty_option]
    ids = {sid for _, sid in wanted}
    async with start_sim() as sim, Client.open(sim.url()) as client:
        await client.subscribe(wanted, FeedMode.FULL)
        first = await client.packets(3)
        assert all(isinstance(p, PrevClosePacket) for p in first)
        assert [p.security_id for p in first] == [sid for _, sid in wanted]
        later = await client.packets(60)
        assert all(isinstance(p, FullPacket) for p in later)
        assert {p.security_id for p in later} == ids, "ticks for exactly the subscribed ids"
        assert client.frame_sizes == [16] * 3 + [162] * len(later), "one packet per frame"
        option = next(p for p in later if isinstance(p, FullPacket) and p.security_id == nifty_option[1])
        assert option.segment == 2 and option.oi > 0
        for p in later:
            assert isinstance(p, FullPacket)
            assert depth_levels(p.depth)[0].bid_price < depth_levels(p.depth)[0].ask_price and p.ltq > 0
            assert p.day_low <= p.ltp <= p.day_high
            assert abs(p.ltt_epoch - time.time()) < 60
        assert client.errors.malformed == 0
        [info] = sim.connections()
        assert sorted(info.subscriptions) == sorted((seg, sid, "FULL") for seg, sid in wanted)


async def test_quote_mode_sends_quote_plus_oi_for_derivatives_and_ticker_mode_tickers(
    start_sim: Any, nifty_option: tuple[str, int]
) -> None:
    async with start_sim() as sim, Client.open(sim.url()) as client:
        await client.subscribe([RELIANCE, nifty_option], FeedMode.QUOTE)
        packets = await client.packets(40)
        kinds = {(type(p), p.security_id) for p in packets[2:]}
        assert kinds == {(QuotePacket, 2885), (QuotePacket, nifty_option[1]), (OIPacket, nifty_option[1])}
        # Re-subscribing in another mode switches the mode (the last subscription wins).
        await client.subscribe([RELIANCE, nifty_option], FeedMode.TICKER)
        await wait_for(lambda: {s[2] for s in sim.connections()[0].subscriptions} == {"TICKER"})
        await client.until(lambda p: isinstance(p, PrevClosePacket) and p.security_id == nifty_option[1])
        after = await client.packets(20)
        assert all(isinstance(p, TickerPacket) for p in after[2:])
        assert len(sim.connections()[0].subscriptions) == 2


async def test_unsubscribe_stops_the_ticks(start_sim: Any) -> None:
    async with start_sim(ticks_per_second=50.0) as sim, Client.open(sim.url()) as client:
        await client.subscribe([NIFTY, RELIANCE], FeedMode.FULL)
        await client.packets(20)
        for message in build_unsubscribe_messages([NIFTY], FeedMode.FULL):
            await client.ws.send(message)
        # Requests are handled in order: once the prev close of a later subscription
        # arrives, every frame after it was written after the unsubscribe.
        await client.subscribe([("NSE_EQ", 1333)], FeedMode.TICKER)
        await client.until(lambda p: isinstance(p, PrevClosePacket) and p.security_id == 1333)
        after = await client.packets(40)
        assert 13 not in {p.security_id for p in after}
        assert {p.security_id for p in after} == {2885, 1333}
        [info] = sim.connections()
        assert sorted(info.subscriptions) == [("NSE_EQ", 1333, "TICKER"), ("NSE_EQ", 2885, "FULL")]


async def test_bench_options_stamp_send_time_and_permessage_deflate(start_sim: Any) -> None:
    """Bench-only options: Full packets carry the UTC ms of the day at send in `volume`,
    and permessage-deflate is accepted when offered. Both are off by default."""
    async with start_sim(ticks_per_second=50.0) as sim, Client.open(sim.url()) as client:
        assert client.ws.response is not None and "Sec-WebSocket-Extensions" not in client.ws.response.headers
        await client.subscribe([RELIANCE], FeedMode.FULL)
        full = [p for p in await client.packets(6) if isinstance(p, FullPacket)]
        assert sim.market is not None and full
        assert max(p.volume for p in full) <= sim.market.book(*RELIANCE).volume, "off: the book's own volume"
    async with start_sim(ticks_per_second=50.0, stamp_send_time=True, permessage_deflate=True) as sim:
        async with Client.open(sim.url(), compression="deflate") as client:
            assert client.ws.response is not None
            assert "permessage-deflate" in client.ws.response.headers.get("Sec-WebSocket-Extensions", "")
            await client.subscribe([RELIANCE, NIFTY], FeedMode.FULL)
            packets = await client.packets(30)
            received_ms = time.time() * 1000 % 86_400_000
            stamps = [p.volume for p in packets if isinstance(p, FullPacket)]
            assert len(stamps) >= 20
            assert all(0 <= received_ms - stamp < 2_000 for stamp in stamps), (received_ms, stamps)
            assert stamps == sorted(stamps), "send times only grow"
            assert client.errors.malformed == 0


@pytest.mark.parametrize("deflate", [False, True], ids=["raw-frames", "permessage-deflate"])
async def test_the_client_receives_exactly_the_packets_made(
    start_sim: Any, nifty_option: tuple[str, int], monkeypatch: pytest.MonkeyPatch, deflate: bool
) -> None:
    """Without an extension the send loop frames packets itself (websockets' send_binary
    with deflate): either way every frame is one packet, byte for byte as the books made
    it, in order per instrument and kind, with the server's pings in between."""
    made: dict[tuple[int, int], list[bytes]] = {}

    def recording(method: Callable[..., bytes]) -> Callable[..., bytes]:
        def wrapper(book: Book, *args: Any) -> bytes:
            packet = method(book, *args)
            made.setdefault((packet[0], book.security_id), []).append(packet)
            return packet

        return wrapper

    for name in ("prev_close_packet", "ticker_packet", "quote_packet", "oi_packet", "full_packet"):
        monkeypatch.setattr(Book, name, recording(getattr(Book, name)))
    settings = {"burst": True, "total_rate_cap": 10_000.0, "ping_interval": 0.05, "stamp_send_time": True}
    async with start_sim(permessage_deflate=deflate, **settings) as sim:
        async with Client.open(sim.url(), compression="deflate" if deflate else None) as client:
            assert client.ws.response is not None
            assert ("permessage-deflate" in client.ws.response.headers.get("Sec-WebSocket-Extensions", "")) == deflate
            await client.subscribe([NIFTY, nifty_option], FeedMode.FULL)
            await client.subscribe([RELIANCE, nifty_option], FeedMode.QUOTE)  # the option switches to Quote + OI
            await client.subscribe([("NSE_EQ", 1333)], FeedMode.TICKER)
            frames: list[bytes] = []
            async with asyncio.timeout(TIMEOUT):
                while len(frames) < 4000:
                    data = await client.ws.recv()
                    assert isinstance(data, bytes)
                    frames.append(data)
            assert len(client.ws.pings) >= 2, "pings went out between the batches"
    got: dict[tuple[int, int], list[bytes]] = {}
    for data in frames:
        assert len(decode_frame(data, client.errors)) == 1, "one packet per frame"
        got.setdefault((data[0], int.from_bytes(data[4:8], "little")), []).append(data)
    assert client.errors.malformed == 0
    assert {code for code, _ in got} == {2, 4, 5, 6, 8}
    for key, packets in got.items():
        assert packets == made[key][: len(packets)], key


async def test_more_than_100_instruments_in_one_message_is_refused_with_814(start_sim: Any) -> None:
    entries = [{"ExchangeSegment": "NSE_EQ", "SecurityId": str(10_000 + i)} for i in range(101)]
    message = json.dumps({"RequestCode": 15, "InstrumentCount": 101, "InstrumentList": entries})
    async with start_sim() as sim, Client.open(sim.url()) as client:
        await client.ws.send(message)
        packets, closed = await client.closed()
        assert packets == [DisconnectPacket(0, 0, 814)], "nothing of the message was applied"
        assert isinstance(closed, ConnectionClosedOK)


async def test_invalid_requests_can_be_ignored_instead(start_sim: Any) -> None:
    entries = [{"ExchangeSegment": "NSE_EQ", "SecurityId": str(10_000 + i)} for i in range(101)]
    async with start_sim(invalid_request_action="ignore") as sim, Client.open(sim.url()) as client:
        await client.ws.send(json.dumps({"RequestCode": 15, "InstrumentCount": 101, "InstrumentList": entries}))
        await client.ws.send("not json")
        await client.subscribe([RELIANCE], FeedMode.TICKER)
        (prev,) = await client.packets(1)
        assert isinstance(prev, PrevClosePacket) and prev.security_id == 2885
        assert len(sim.connections()[0].subscriptions) == 1


async def test_more_than_5000_instruments_on_a_connection_gets_804(start_sim: Any) -> None:
    async with start_sim(ticks_per_second=0.01, snapshot_on_subscribe=False) as sim, Client.open(sim.url()) as client:
        five_thousand = [("NSE_EQ", 100_000 + i) for i in range(5000)]
        await client.subscribe(five_thousand, FeedMode.TICKER)
        seen: set[int] = set()

        def all_prev_closes(p: Packet) -> bool:
            if isinstance(p, PrevClosePacket):
                seen.add(p.security_id)
            return len(seen) == 5000

        await client.until(all_prev_closes, timeout=20)
        assert len(sim.connections()[0].subscriptions) == 5000
        # Re-subscribing known instruments does not count twice.
        await client.subscribe(five_thousand[:100], FeedMode.QUOTE)
        await client.until(lambda p: isinstance(p, PrevClosePacket) and p.security_id == 100_099)
        await client.subscribe([("NSE_EQ", 99)], FeedMode.TICKER)
        packets, closed = await client.closed(timeout=10)
        assert packets[-1] == DisconnectPacket(0, 0, 804)
        assert not any(isinstance(p, PrevClosePacket) and p.security_id == 99 for p in packets)
        assert isinstance(closed, ConnectionClosedOK)


async def test_sixth_connection_of_a_client_id_kicks_the_first_with_805(start_sim: Any) -> None:
    async with start_sim() as sim:
        async with (
            Client.open(sim.url(client_id="C9")) as first,
            Client.open(sim.url(client_id="C9")) as c2,
            Client.open(sim.url(client_id="C9")) as c3,
            Client.open(sim.url(client_id="C9")) as c4,
            Client.open(sim.url(client_id="C9")) as c5,
            Client.open(sim.url(client_id="OTHER")) as other,
        ):
            await wait_for(lambda: len(sim.connections()) == 6)
            first_id = min(c.id for c in sim.connections() if c.client_id == "C9")
            async with Client.open(sim.url(client_id="C9")) as sixth:
                packets, closed = await first.closed()
                assert packets == [DisconnectPacket(0, 0, 805)]
                assert isinstance(closed, ConnectionClosedOK)
                conns = sim.connections()
                assert first_id not in {c.id for c in conns}
                assert sum(c.client_id == "C9" for c in conns) == 5
                for client in (c2, c3, c4, c5, sixth, other):
                    await client.subscribe([NIFTY], FeedMode.TICKER)
                    assert isinstance((await client.packets(1))[0], PrevClosePacket)


async def test_binary_frames_from_the_client_are_ignored(start_sim: Any) -> None:
    async with start_sim() as sim, Client.open(sim.url()) as client:
        await client.ws.send(bytes(83))  # what dhanhq sends after the JSON disconnect on close
        await client.subscribe([RELIANCE], FeedMode.TICKER)
        (prev,) = await client.packets(1)
        assert isinstance(prev, PrevClosePacket)
        await wait_for(lambda: sim.connections()[0].binary_frames_ignored == 1)
        assert sim.connections()[0].state == "open"


async def test_disconnect_request_closes_normally(start_sim: Any) -> None:
    async with start_sim() as sim, Client.open(sim.url()) as client:
        await client.ws.send(build_disconnect())
        await client.ws.send(bytes(83))
        packets, closed = await client.closed()
        assert not any(isinstance(p, DisconnectPacket) for p in packets)
        assert isinstance(closed, ConnectionClosedOK)
        await wait_for(lambda: sim.connections() == [])


async def test_server_pings_at_the_configured_interval(start_sim: Any) -> None:
    async with start_sim(ping_interval=0.2) as sim, Client.open(sim.url()) as client:
        ws = client.ws
        await wait_for(lambda: len(ws.pings) >= 4, timeout=3)
        gaps = [b - a for a, b in zip(ws.pings, ws.pings[1:], strict=False)]
        assert all(0.1 < gap < 0.6 for gap in gaps), gaps
        # The client's automatic pongs keep the connection up past ping_timeout.
        assert sim.connections()[0].state == "open"


async def test_paced_rate_and_total_cap(start_sim: Any) -> None:
    instruments = [("NSE_EQ", 200_000 + i) for i in range(10)]
    async with start_sim(ticks_per_second=5.0) as sim, Client.open(sim.url()) as client:
        await client.subscribe(instruments, FeedMode.TICKER)
        await client.packets(20)  # prev closes and snapshots
        start = time.monotonic()
        got = await client.packets(50)
        rate = len(got) / (time.monotonic() - start)
        assert 25 < rate < 100, f"10 instruments at 5/s each gave {rate:.0f}/s"
    async with start_sim(burst=True, total_rate_cap=2000.0) as sim, Client.open(sim.url()) as client:
        await client.subscribe(instruments, FeedMode.TICKER)
        await client.packets(20)
        start = time.monotonic()
        got = await client.packets(2000)
        rate = len(got) / (time.monotonic() - start)
        assert 1000 < rate < 3000, f"burst mode under a 2000/s cap gave {rate:.0f}/s"


def _official_client_session(url: str, instruments: list[tuple[int, str, int]], frames: int) -> list[dict[str, Any]]:
    """dhanhq's MarketFeed against the simulator: connect, read, disconnect. It makes and
    installs its own event loop, so it runs in a thread of its own."""
    from dhanhq import DhanContext, MarketFeed

    feed = MarketFeed(DhanContext("1000000001", "token"), instruments, version="v2")
    try:
        feed.run_forever()  # connects and subscribes
        data = [feed.get_data() for _ in range(frames)]
        feed.loop.run_until_complete(feed.disconnect())  # JSON 12, then the 83-byte frame
        return data
    finally:
        feed.loop.close()


async def test_the_official_client_reads_the_feed(start_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from dhanhq import MarketFeed

    async with start_sim() as sim:
        monkeypatch.setattr(MarketFeed, "market_feed_wss", f"ws://127.0.0.1:{sim.ws_port}")
        instruments = [(MarketFeed.NSE, "2885", MarketFeed.Full), (MarketFeed.IDX, "13", MarketFeed.Quote)]
        data = await asyncio.wait_for(asyncio.to_thread(_official_client_session, sim.url(), instruments, 20), 15)
        kinds = {(d["type"], d["security_id"]) for d in data}
        assert {("Previous Close", 2885), ("Previous Close", 13), ("Full Data", 2885), ("Quote Data", 13)} <= kinds
        full = next(d for d in data if d["type"] == "Full Data")
        assert float(full["depth"][0]["bid_price"]) < float(full["depth"][0]["ask_price"])
        await wait_for(lambda: sim.connections() == [])


# --- faults --------------------------------------------------------------------------


async def test_drop_closes_without_a_close_frame(start_sim: Any) -> None:
    async with start_sim() as sim, Client.open(sim.url()) as client:
        await client.subscribe([NIFTY], FeedMode.TICKER)
        await client.packets(3)
        [info] = sim.connections()
        assert sim.drop(info.id) == [info.id]
        _, closed = await client.closed()
        assert isinstance(closed, ConnectionClosedError) and closed.rcvd is None
        assert sim.connections() == []


async def test_silence_then_resume(start_sim: Any) -> None:
    async with start_sim(ping_interval=0.2, ticks_per_second=50.0) as sim, Client.open(sim.url()) as client:
        await client.subscribe([NIFTY, RELIANCE], FeedMode.FULL)
        await client.packets(10)
        [info] = sim.connections()
        sim.silence(info.id)
        assert sim.connections()[0].state == "silenced"
        # Drain what was in flight, then nothing at all: no data, no pings, no pongs.
        with pytest.raises(TimeoutError):
            while True:
                await client.frame(timeout=0.5)
        pings_before = len(client.ws.pings)
        pong = await client.ws.ping()
        await asyncio.sleep(1.0)
        assert len(client.ws.pings) == pings_before
        assert isinstance(pong, asyncio.Future) and not pong.done()
        with pytest.raises(TimeoutError):
            await client.frame(timeout=0.3)
        assert sim.connections()[0].state == "silenced", "silent, not closed"
        sim.resume(info.id)
        await asyncio.wait_for(pong, TIMEOUT)  # the pending ping is answered
        packets = await client.packets(10)
        assert {p.security_id for p in packets} == {13, 2885}
        await wait_for(lambda: len(client.ws.pings) > pings_before, timeout=3)
        assert sim.connections()[0].state == "open"


async def test_disconnect_with_a_given_reason(start_sim: Any) -> None:
    async with start_sim() as sim, Client.open(sim.url()) as client:
        await client.subscribe([NIFTY], FeedMode.QUOTE)
        await client.packets(2)
        [info] = sim.connections()
        sim.disconnect(info.id, 807)
        packets, closed = await client.closed()
        assert packets[-1] == DisconnectPacket(0, 0, 807)
        assert isinstance(closed, ConnectionClosedOK) and closed.rcvd is not None and closed.rcvd.code == 1000


async def test_garbage_frames_decode_as_protocol_errors(start_sim: Any) -> None:
    async with start_sim() as sim, Client.open(sim.url()) as client:
        await client.subscribe([RELIANCE], FeedMode.TICKER)
        await client.packets(2)
        [info] = sim.connections()
        for size in (1, 5, 8, 64, 300):
            sim.garbage(info.id, size, count=2)
        await wait_for_async(lambda: client.frame(), lambda: client.errors.malformed >= 10)
        assert client.errors.last_error is not None
        await client.packets(3)  # still up, still ticking
        assert sim.connections()[0].state == "open"


async def wait_for_async(
    step: Callable[[], Awaitable[Any]], condition: Callable[[], bool], timeout: float = TIMEOUT
) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await step()


async def test_unknown_connection_ids_raise(start_sim: Any) -> None:
    async with start_sim() as sim:
        with pytest.raises(KeyError):
            sim.drop(12345)
        assert sim.silence("all") == []


# --- control API -----------------------------------------------------------------------


async def test_control_api_over_http(start_sim: Any, nifty_option: tuple[str, int]) -> None:
    async with start_sim(ping_interval=0.2) as sim:
        port = sim.control_port
        status, health = await http(port, "GET", "/health")
        assert status == 200 and health["status"] == "ok" and health["connections"] == 0
        async with Client.open(sim.url(client_id="C7")) as a, Client.open(sim.url(client_id="C8")) as b:
            await a.subscribe([NIFTY, nifty_option], FeedMode.FULL)
            await b.subscribe([RELIANCE], FeedMode.QUOTE)
            await a.packets(4)
            await b.packets(2)
            status, body = await http(port, "GET", "/connections")
            assert status == 200
            conns = {c["client_id"]: c for c in body["connections"]}
            assert conns["C7"]["subscription_count"] == 2
            assert sorted(conns["C7"]["subscriptions"]) == sorted(
                [["IDX_I", 13, "FULL"], [nifty_option[0], nifty_option[1], "FULL"]]
            )
            assert conns["C8"]["subscriptions"] == [["NSE_EQ", 2885, "QUOTE"]]
            for c in conns.values():
                assert c["state"] == "open" and c["packets_sent"] > 0 and c["remote"].startswith("127.0.0.1:")
                assert c["connected_at"].endswith("Z")
            a_id, b_id = conns["C7"]["id"], conns["C8"]["id"]

            assert (await http(port, "GET", f"/connections/{a_id}"))[1]["client_id"] == "C7"
            assert (await http(port, "GET", "/connections/999"))[0] == 404
            assert (await http(port, "POST", "/connections/999/drop"))[0] == 404
            assert (await http(port, "GET", "/nowhere"))[0] == 404
            assert (await http(port, "GET", f"/connections/{a_id}/drop"))[0] == 405
            assert (await http(port, "POST", f"/connections/{a_id}/disconnect", {"reason": "x"}))[0] == 400

            assert await http(port, "POST", "/connections/all/silence") == (200, {"affected": [a_id, b_id]})

            async def all_silenced() -> bool:  # the state flips as each connection's send loop notices
                return {c["state"] for c in (await http(port, "GET", "/connections"))[1]["connections"]} == {"silenced"}

            await eventually(all_silenced, timeout=TIMEOUT, what="every connection silenced")
            assert await http(port, "POST", "/connections/all/resume") == (200, {"affected": [a_id, b_id]})

            assert await http(port, "POST", f"/connections/{b_id}/garbage", {"bytes": 32, "count": 3}) == (
                200,
                {"affected": [b_id]},
            )
            await wait_for_async(lambda: b.frame(), lambda: b.errors.malformed >= 3)

            assert await http(port, "POST", f"/connections/{a_id}/disconnect", {"reason": 805}) == (
                200,
                {"affected": [a_id]},
            )
            packets, closed = await a.closed()
            assert packets[-1] == DisconnectPacket(0, 0, 805) and isinstance(closed, ConnectionClosedOK)

            assert await http(port, "POST", f"/connections/{b_id}/drop") == (200, {"affected": [b_id]})
            _, closed = await b.closed()
            assert isinstance(closed, ConnectionClosedError) and closed.rcvd is None
        await wait_for(lambda: sim.connections() == [])
        status, health = await http(port, "GET", "/health")
        assert health["connections"] == 0 and health["packets_sent"] > 0


async def test_stop_closes_open_and_silenced_connections(start_sim: Any) -> None:
    async with start_sim() as sim:
        async with Client.open(sim.url()) as a, Client.open(sim.url()) as b:
            await wait_for(lambda: len(sim.connections()) == 2)
            sim.silence(sim.connections()[0].id)
            started = time.monotonic()
            await asyncio.wait_for(sim.stop(), TIMEOUT)
            assert time.monotonic() - started < 3
            for client in (a, b):
                _, closed = await client.closed()
                assert isinstance(closed, ConnectionClosed)


# --- settings ----------------------------------------------------------------------------


def test_settings_from_env_and_cli() -> None:
    from services.common.config import ConfigError
    from simulator.__main__ import parse_args

    env = {
        "SIM_PORT": "9001",
        "SIM_VALID_TOKENS": "a, b",
        "SIM_BURST": "true",
        "SIM_TICKS_PER_SECOND": "2.5",
        "SIM_SEED": "4",
        "SIM_MASTER_PATH": "/tmp/m.csv",
        "SIM_TRADING_DATE": "2026-12-04",
    }
    s = SimulatorSettings.from_env(env)
    assert (s.port, s.valid_tokens, s.burst, s.ticks_per_second, s.seed) == (9001, frozenset({"a", "b"}), True, 2.5, 4)
    assert s.master_path == Path("/tmp/m.csv") and s.valid_client_ids is None and s.ping_interval == 10.0
    assert s.trading_date == date(2026, 12, 4) and parse_args(["--trading-date", "2026-12-07"]).trading_date == date(
        2026, 12, 7
    )
    assert SimulatorSettings.from_env({}) == SimulatorSettings()
    for bad in (
        {"SIM_PORT": "x"},
        {"SIM_PORT": "70000"},
        {"SIM_BURST": "maybe"},
        {"SIM_INVALID_REQUEST_ACTION": "shrug"},
    ):
        with pytest.raises(ConfigError):
            SimulatorSettings.from_env(bad)
    cli = parse_args(["--port", "8000", "--control-port", "8001", "--burst", "--tokens", "t1,t2", "--master", "/x.csv"])
    assert (cli.port, cli.control_port, cli.burst, cli.valid_tokens, cli.master_path) == (
        8000,
        8001,
        True,
        frozenset({"t1", "t2"}),
        Path("/x.csv"),
    )
