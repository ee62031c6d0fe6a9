"""The terminal app (terminal/): rendered headless by textual's pilot from a recorded stream
(what is on screen: the watchlist cells, a stale marker, an eviction message, the option
chain with its ATM row), and once against a live gateway (a watchlist row with a live price)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest_asyncio
from dataserver.common.v1 import common_pb2
from dataserver.feed.v1 import feed_pb2
from dataserver.subscription.v1 import subscription_pb2 as spb
from textual.coordinate import Coordinate
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from services.common.config import load_settings
from services.stack.__main__ import banner, plan
from services.stack.keys import DevelopmentKeys
from terminal.__main__ import build, parse
from terminal.app import TerminalApp, chain_header, leg_cells
from terminal.chain import ChainView, gateway_view
from terminal.model import TerminalModel
from tests.feed_fixtures import FeedUnderTest, eventually, running_feed
from tests.test_subscription_capacity import add

IDX = common_pb2.EXCHANGE_SEGMENT_IDX_I
FNO = common_pb2.EXCHANGE_SEGMENT_NSE_FNO
NSE_EQ = common_pb2.EXCHANGE_SEGMENT_NSE_EQ
NIFTY = common_pb2.InstrumentKey(exchange_segment=IDX, security_id=13)
SBIN = common_pb2.InstrumentKey(exchange_segment=NSE_EQ, security_id=3045)


def item(item_id: str, symbol: str, key: common_pb2.InstrumentKey) -> spb.WatchlistItem:
    return spb.WatchlistItem(item_id=item_id, symbol=symbol, underlying=key, state=spb.WATCHLIST_ITEM_STATE_ACTIVE)


def tick(key: common_pb2.InstrumentKey, last: float, close: float, volume: int = 0) -> feed_pb2.Tick:
    return feed_pb2.Tick(
        key=key,
        last_price=last,
        previous_close=close,
        volume=volume,
        depth=[feed_pb2.DepthLevel(bid_price=last - 0.5, ask_price=last + 0.5)],
    )


def recorded() -> list[feed_pb2.StreamTicksResponse]:
    """A my-watchlist stream: snapshot, a batch, SBIN's shard interrupted, then SBIN evicted."""
    evicted = item("i2", "SBIN", SBIN)
    evicted.state = spb.WATCHLIST_ITEM_STATE_EVICTED
    evicted.eviction_message = "evicted to make room for a newer watchlist item"
    return [
        feed_pb2.StreamTicksResponse(
            snapshot=feed_pb2.TickSnapshot(ticks=[tick(NIFTY, 24000.0, 23900.0), tick(SBIN, 800.0, 790.0, 1200)])
        ),
        feed_pb2.StreamTicksResponse(batch=feed_pb2.TickBatch(ticks=[tick(NIFTY, 24100.0, 23900.0, 5000)])),
        feed_pb2.StreamTicksResponse(
            event=feed_pb2.StreamEvent(
                upstream=feed_pb2.UpstreamStatusChange(
                    state=feed_pb2.UPSTREAM_STATE_INTERRUPTED,
                    instruments=[SBIN],
                    affected_instruments=1,
                    cause=feed_pb2.UPSTREAM_CAUSE_RECONNECTING,
                    reason="shard 0 reconnecting",
                )
            )
        ),
        feed_pb2.StreamTicksResponse(
            event=feed_pb2.StreamEvent(
                watchlist=spb.WatchlistEvent(kind=spb.WATCHLIST_EVENT_KIND_EVICTED, watchlist_item=evicted)
            )
        ),
    ]


def replayed() -> TerminalModel:
    model = TerminalModel()
    model.set_items([item("i1", "NIFTY", NIFTY), item("i2", "SBIN", SBIN)])
    for response in recorded():
        model.apply(response)
    return model


def cells(table: DataTable, key: str) -> list[str]:
    return [str(c) for c in table.get_row(key)]


async def test_watchlist_renders_prices_stale_and_eviction_from_a_recorded_stream() -> None:
    app = TerminalApp(replayed())
    async with app.run_test() as pilot:
        await pilot.pause()
        table = app.query_one("#watchlist", DataTable)
        assert cells(table, "i1")[:6] == ["NIFTY", "24,100.00", "+200.00", "+0.84%", "24,099.50", "24,100.50"]
        assert cells(table, "i1")[6] == "5,000"
        assert cells(table, "i1")[8] == ""
        assert cells(table, "i2")[8] == "EVICTED"
        messages = str(app.query_one("#messages", Static).content)
        assert "STALE: 1 instrument(s), reconnecting: shard 0 reconnecting" in messages
        assert "EVICTED SBIN: evicted to make room for a newer watchlist item" in messages
        assert "live" in str(app.query_one("#status", Static).content)


async def test_a_stale_instrument_is_marked_and_a_tick_clears_it() -> None:
    model = TerminalModel()
    model.set_items([item("i2", "SBIN", SBIN)])
    for response in recorded()[:3]:
        model.apply(response)
    app = TerminalApp(model)
    async with app.run_test() as pilot:
        await pilot.pause()
        table = app.query_one("#watchlist", DataTable)
        assert cells(table, "i2")[8] == "STALE"
        model.apply(feed_pb2.StreamTicksResponse(batch=feed_pb2.TickBatch(ticks=[tick(SBIN, 801.0, 790.0)])))
        app.render_model()
        await pilot.pause()
        assert cells(table, "i2")[8] == ""


class RecordedChain:
    """A ChainSource over a recorded StreamOptionChain update."""

    def __init__(self, update: feed_pb2.OptionChainUpdate) -> None:
        self.update = update
        self.opened = ""

    async def open(self, symbol: str) -> None:
        self.opened = symbol

    def view(self) -> ChainView | None:
        return gateway_view(self.opened, self.update) if self.opened else None


async def test_option_chain_view_switched_with_a_key_shows_ce_strike_pe_and_the_atm() -> None:
    model = replayed()  # NIFTY at 24,100
    # As the gateway sends it: the ATM follows NIFTY's price; no IV computed (no status).
    rows = [
        feed_pb2.OptionChainRow(
            strike_price=s,
            call=feed_pb2.ChainOption(last_price=ce, change=ce - 100.0),
            put=feed_pb2.ChainOption(last_price=pe, change=pe - 95.0),
        )
        for s, ce, pe in ((24000.0, 150.0, 60.0), (24100.0, 120.0, 90.0), (24200.0, 80.0, 130.0))
    ]
    update = feed_pb2.OptionChainUpdate(
        underlying=NIFTY, expiry_date="2026-12-10", underlying_price=24100.0, atm_strike=24100.0, rows=rows
    )
    source = RecordedChain(update)
    app = TerminalApp(model, chain=source)
    async with app.run_test() as pilot:
        await pilot.press("c")
        await pilot.press(*"nifty", "enter")
        await pilot.pause()
        assert source.opened == "NIFTY"
        assert app.showing == "chain"
        table = app.query_one("#chain", DataTable)
        assert table.display and not app.query_one("#watchlist", DataTable).display
        atm = table.get_row("24100")
        middle = len(atm) // 2
        assert str(atm[middle]) == "24100"
        assert str(atm[middle - 2]) == "120.00"  # CE LTP left of the strike
        assert str(atm[middle + 2]) == "90.00"  # PE LTP right of it
        assert str(atm[3]) == "—"  # CE IV: the registry source has none (the gateway source computes it)
        assert "reverse" in str(atm[middle].style)  # the ATM row is highlighted
        assert "reverse" not in str(getattr(table.get_row("24000")[middle], "style", ""))
        await pilot.press("w")
        assert app.showing == "watchlist"


@pytest_asyncio.fixture(loop_scope="session")
async def live(database_url: str, masters_dir: Path) -> AsyncIterator[FeedUnderTest]:
    async with running_feed(database_url, masters_dir) as running:
        yield running


async def test_against_a_live_gateway_shows_a_watchlist_row_with_a_live_price(live: FeedUnderTest) -> None:
    await add(live.subscription, "trader", "RELIANCE", underlying_only=True)
    token = dict(await live.subscription.user("trader"))["authorization"].removeprefix("Bearer ")
    registry = live.subscription.settings.registry_addr
    args = ["--gateway", live.gateway.app.address, "--subscription", live.subscription.address]
    app, connection = build(parse([*args, "--registry", registry, "--token", token]))
    model = app.model
    started = time.monotonic()
    try:
        async with app.run_test() as pilot:
            await pilot.pause()
            assert time.monotonic() - started < 2.0, "the app takes over 2 s to start"
            table = app.query_one("#watchlist", DataTable)

            def priced() -> bool:
                app.render_model()
                return table.row_count > 0 and str(table.get_cell_at(Coordinate(0, 1))) not in ("—", "")

            await eventually(priced, timeout=20, what="RELIANCE priced on screen")
            assert str(table.get_cell_at(Coordinate(0, 0))) == "RELIANCE"
            assert model.connection == "live"
            await pilot.press("a")
            await pilot.press(*"sbin", "enter")
            await eventually(lambda: {i.symbol for i in model.items.values()} >= {"RELIANCE", "SBIN"}, timeout=20)
            # The option chain of an underlying typed in, from the gateway's StreamOptionChain.
            await pilot.press("c", *"sbin", "enter")
            chain = app.query_one("#chain", DataTable)

            def chain_priced() -> bool:
                app.render_model()
                return app.showing == "chain" and any(
                    str(chain.get_row_at(r)[6]).replace(" STALE", "") not in ("—", "") for r in range(chain.row_count)
                )

            await eventually(chain_priced, timeout=20, what="a priced call in SBIN's chain")
            await pilot.press("w")
            # Removing the selected row (RELIANCE, first by symbol) takes it off the watchlist.
            app.render_model()
            await pilot.press("d")
            await eventually(lambda: "RELIANCE" not in {i.symbol for i in model.items.values()}, timeout=20)
    finally:
        await connection.close()


def _greek_cells(table: DataTable[Any]) -> list[str]:
    """The chain's IV and greek cells, each side, every row, as shown."""
    return [str(cell) for r in range(table.row_count) for cell in table.get_row_at(r) if "%" in str(cell)]


async def test_the_command_shows_nifty_chain_with_iv_and_greeks_that_change(live: FeedUnderTest) -> None:
    """The app as `dataserver-terminal` runs it: built before any event loop, then `App.run`
    with a loop of its own (here on a thread, headless, driven by an autopilot), so its gRPC
    channels must open in that loop. The c key opens NIFTY's chain with server IV and delta
    that move as ticks arrive; g switches to the greeks."""
    token = dict(await live.subscription.user("trader"))["authorization"].removeprefix("Bearer ")
    registry = live.subscription.settings.registry_addr
    args = ["--gateway", live.gateway.app.address, "--subscription", live.subscription.address]
    seen: dict[str, Any] = {}

    async def drive(pilot: Pilot[object]) -> None:
        app = cast(TerminalApp, pilot.app)
        try:
            await pilot.press("c", *"nifty", "enter")
            chain = app.query_one("#chain", DataTable)

            def ivs() -> list[str]:
                app.render_model()
                return _greek_cells(chain) if app.showing == "chain" else []

            await eventually(lambda: len(ivs()) > 10, timeout=30, what="NIFTY's chain with IVs on screen")
            first = ivs()
            seen["header"] = str(app.query_one("#chain-info", Static).render())
            await eventually(lambda: ivs() != first, timeout=30, what="IVs that change as ticks arrive")
            await pilot.press("g")
            app.render_model()
            seen["columns"] = [str(c.label) for c in chain.columns.values()]
            seen["greeks"] = [str(chain.get_row_at(r)[2]) for r in range(chain.row_count)]  # CE Gamma
        except BaseException as error:
            seen["error"] = error
        finally:
            app.exit()

    def run() -> None:
        app, connection = build(parse([*args, "--registry", registry, "--token", token]))
        app.run(headless=True, size=(200, 40), auto_pilot=drive)
        asyncio.run(connection.close())

    await asyncio.wait_for(asyncio.to_thread(run), timeout=120)
    if "error" in seen:
        raise seen["error"]
    assert seen["header"].startswith("NIFTY ") and "forward" in seen["header"] and seen["header"].endswith("live")
    assert seen["columns"][:6] == ["CE IV", "CE Delta", "CE Gamma", "CE Theta", "CE Vega", "CE LTP"]
    assert any(g.replace(".", "").isdigit() for g in seen["greeks"]), seen["greeks"]


def test_make_run_prints_how_to_start_the_terminal() -> None:
    processes = plan(load_settings({"STACK_PORT_OFFSET": "100"}))
    text = banner(processes, "simulator", DevelopmentKeys(service="s", admin="a", user="dsk_user"))
    line = next(line for line in text.splitlines() if "dataserver-terminal" in line)
    assert "--gateway 127.0.0.1:50153 --subscription 127.0.0.1:50152 --registry 127.0.0.1:50151" in line
    assert "--token dsk_user" in line
    assert parse(["--gateway", "127.0.0.1:50153", "--token", "dsk_user"]).gateway == "127.0.0.1:50153"


def test_the_chain_header_says_which_options_are_stale_and_why() -> None:
    def option(stale_reason: str = "") -> feed_pb2.ChainOption:
        return feed_pb2.ChainOption(last_price=10.0, stale=bool(stale_reason), stale_reason=stale_reason)

    update = feed_pb2.OptionChainUpdate(
        expiry_date="2026-12-08",
        underlying_price=25_900.0,
        atm_strike=25_900.0,
        forward_price=25_905.5,
        forward_source=feed_pb2.FORWARD_SOURCE_LISTED_FUTURE,
        put_call_ratio=0.97,
        rows=[
            feed_pb2.OptionChainRow(strike_price=25_850.0, call=option(), put=option("not subscribed upstream")),
            feed_pb2.OptionChainRow(strike_price=25_900.0, call=option("not subscribed upstream"), put=option()),
        ],
    )
    update.rows[0].call.greeks_status = feed_pb2.GREEKS_STATUS_NO_IMPLIED_VOLATILITY
    update.rows[1].put.greeks_status = feed_pb2.GREEKS_STATUS_COMPUTED
    update.rows[1].put.implied_volatility = 0.125
    view = gateway_view("NIFTY", update)
    assert [leg_cells(row.call, ("IV",)) + leg_cells(row.put, ("IV",)) for row in view.rows] == [
        ["no IV", "—"],  # a price with no Black-76 IV says so; no status, no reason
        ["—", "12.5%"],
    ]
    header = chain_header(view)
    assert header == (
        "NIFTY 2026-12-08 | underlying 25,900.00 | ATM 25900 | forward 25,905.50 (the future) | PCR 0.97"
        " | 2 options stale: not subscribed upstream"
    )
    assert chain_header(gateway_view("NIFTY", feed_pb2.OptionChainUpdate(rows=update.rows[:1]), "x")).endswith("| x")
