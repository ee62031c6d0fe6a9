"""The terminal's screen (textual): the watchlist table, the option chain table, the status
line and the messages. It renders the model on a timer, so the tick rate only costs the
model's updates, never a redraw per tick, and redraws only the cells that changed."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Input, Static

from terminal.chain import ChainSource, ChainView, Leg
from terminal.model import NONE, TerminalModel, count, price, signed
from terminal.tables import Cell, Rows, ShownRows

REFRESH_SECONDS = 0.25
MESSAGES_SHOWN = 4
WATCH_COLUMNS = ("Symbol", "LTP", "Change", "% Change", "Bid", "Ask", "Volume", "OI", "")
# Per side of the chain, CE mirrored on the left: market values, or (`g`) IV and the greeks.
LEG_COLUMNS = ("OI", "Volume", "IV", "Delta", "Bid", "Ask", "LTP", "Change")
GREEK_COLUMNS = ("IV", "Delta", "Gamma", "Theta", "Vega", "LTP")
ATM_STYLE = "bold reverse"


def chain_columns(legs: tuple[str, ...]) -> tuple[str, ...]:
    return (*(f"CE {c}" for c in legs), "Strike", *(f"PE {c}" for c in reversed(legs)))


def _greek(value: float | None, spec: str) -> str:
    return NONE if value is None else format(value, spec)


def leg_cells(leg: Leg | None, legs: tuple[str, ...] = LEG_COLUMNS) -> list[str]:
    if leg is None:
        return [NONE] * len(legs)
    cells = {
        "OI": count(leg.open_interest),
        "Volume": count(leg.volume),
        "IV": leg.no_iv or _greek(leg.implied_volatility, ".1%"),
        "Delta": _greek(leg.delta, "+.2f"),
        "Gamma": _greek(leg.gamma, ".5f"),
        "Theta": _greek(leg.theta, "+.2f"),
        "Vega": _greek(leg.vega, ".2f"),
        "Bid": price(leg.bid),
        "Ask": price(leg.ask),
        "LTP": price(leg.ltp) + (" STALE" if leg.stale else ""),
        "Change": signed(leg.change),
    }
    return [cells[c] for c in legs]


def chain_cells(view: ChainView, legs: tuple[str, ...] = LEG_COLUMNS) -> Rows:
    rows: Rows = []
    for row in view.rows:
        cells: list[Cell] = [*leg_cells(row.call, legs), f"{row.strike:g}", *reversed(leg_cells(row.put, legs))]
        if row.atm:
            cells = [Text(str(c), style=ATM_STYLE) for c in cells]
        rows.append((f"{row.strike:g}", cells))
    return rows


def watchlist_cells(model: TerminalModel) -> Rows:
    rows: Rows = []
    for r in model.rows():
        marker = "EVICTED" if r.evicted else "STALE" if r.stale else ""
        cells: list[Cell] = [
            r.symbol,
            price(r.ltp),
            signed(r.change),
            signed(r.change_percent, "%"),
            price(r.bid),
            price(r.ask),
            count(r.volume),
            count(r.open_interest),
            marker,
        ]
        rows.append((r.item_id, cells))
    return rows


def chain_header(view: ChainView) -> str:
    parts = [
        f"{view.symbol} {view.expiry_date}",
        f"underlying {price(view.underlying_price)}",
        f"ATM {view.atm_strike:g}",
    ]
    if view.forward:
        parts.append(f"forward {view.forward}")
    if view.put_call_ratio is not None:
        parts.append(f"PCR {view.put_call_ratio:.2f}")
    parts.append(view.state)
    return " | ".join(parts)


class TerminalApp(App[None]):
    """`follow` reads the stream into the model (None: the model is fed from outside, as in a
    test); `add`/`remove` change the watchlist; `chain` is the option chain's source."""

    CSS = """
    #status { height: 1; background: $boost; }
    #messages { height: auto; max-height: 5; color: $warning; }
    #prompt { display: none; }
    #chain { display: none; }
    #chain-info { height: 1; display: none; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "add", "Add"),
        Binding("d", "remove", "Remove selected"),
        Binding("c", "chain", "Option chain"),
        Binding("w", "watchlist", "Watchlist"),
        Binding("g", "greeks", "Greeks/market"),
        Binding("escape", "cancel", "Cancel", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        model: TerminalModel,
        *,
        follow: Callable[[TerminalModel], Awaitable[None]] | None = None,
        add: Callable[[str], Awaitable[str]] | None = None,
        remove: Callable[[str], Awaitable[None]] | None = None,
        chain: ChainSource | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self._follow = follow
        self._add = add
        self._remove = remove
        self._chain = chain
        self._prompting = ""
        self.showing = "watchlist"
        self.leg_columns: tuple[str, ...] = LEG_COLUMNS
        self._shown: dict[str, ShownRows] = {}  # per table, once mounted
        self._texts: dict[str, str] = {}  # what each Static shows, so an unchanged one is not redrawn

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield DataTable(id="watchlist", cursor_type="row")
        yield Static(id="chain-info")
        yield DataTable(id="chain", cursor_type="row")
        yield Input(id="prompt")
        yield Static(id="messages")
        yield Footer()

    def on_mount(self) -> None:
        watchlist, chain = self.query_one("#watchlist", DataTable), self.query_one("#chain", DataTable)
        watchlist.add_columns(*WATCH_COLUMNS)
        chain.add_columns(*chain_columns(self.leg_columns))
        self._shown.update(watchlist=ShownRows(watchlist), chain=ShownRows(chain))
        self.render_model()
        self.set_interval(REFRESH_SECONDS, self.render_model)
        if self._follow is not None:
            self.run_worker(self._follow(self.model), name="stream", exclusive=True)

    def render_model(self) -> None:
        with contextlib.suppress(NoMatches):  # the timer can fire once more as the app closes
            self._render()

    def _render(self) -> None:
        model = self.model
        following = f" | watchlist {model.following}" if model.following else ""
        stale = f" | {len(model.stale)} stale" if model.stale else ""
        rate = model.updates_per_second()
        self._text("#status", f"{model.connection} | {rate:,.0f} updates/s{following}{stale} | {self.showing}")
        self._shown["watchlist"].show(watchlist_cells(model))
        self._render_chain()
        self._text("#messages", "\n".join(list(model.messages)[-MESSAGES_SHOWN:]))

    def _text(self, selector: str, text: str) -> None:
        if self._texts.get(selector) != text:
            self._texts[selector] = text
            self.query_one(selector, Static).update(text)

    def _render_chain(self) -> None:
        view = self._chain.view() if self._chain is not None else None
        if view is None or self.showing != "chain":
            return
        self._shown["chain"].show(chain_cells(view, self.leg_columns))
        self._text("#chain-info", chain_header(view))

    def _prompt(self, purpose: str, placeholder: str) -> None:
        self._prompting = purpose
        prompt = self.query_one("#prompt", Input)
        prompt.placeholder = placeholder
        prompt.value = ""
        prompt.display = True
        prompt.focus()

    def action_add(self) -> None:
        self._prompt("add", "symbol to add to the watchlist, e.g. RELIANCE (Enter; Esc cancels)")

    def action_chain(self) -> None:
        self._prompt("chain", "underlying for the option chain, e.g. NIFTY (Enter; Esc cancels)")

    def action_watchlist(self) -> None:
        self._show("watchlist")

    def action_greeks(self) -> None:
        self.leg_columns = GREEK_COLUMNS if self.leg_columns == LEG_COLUMNS else LEG_COLUMNS
        table = self.query_one("#chain", DataTable)
        table.clear(columns=True)
        table.add_columns(*chain_columns(self.leg_columns))
        self._shown["chain"].reset()
        self.render_model()

    def action_cancel(self) -> None:
        self.query_one("#prompt", Input).display = False
        self._prompting = ""

    def _show(self, which: str) -> None:
        self.showing = which
        self.query_one("#watchlist", DataTable).display = which == "watchlist"
        self.query_one("#chain", DataTable).display = which == "chain"
        self.query_one("#chain-info", Static).display = which == "chain"
        self.query_one(f"#{which}", DataTable).focus()
        self.render_model()

    async def action_remove(self) -> None:
        table = self.query_one("#watchlist", DataTable)
        if self._remove is None or not table.row_count or self.showing != "watchlist":
            return
        item_id = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if item_id is not None:
            item = self.model.items.get(item_id)
            await self._run(self._remove(item_id), f"removing {item.symbol if item else item_id}")

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        symbol = event.value.strip().upper()
        purpose = self._prompting
        self.action_cancel()
        if not symbol:
            return
        if purpose == "add" and self._add is not None:
            await self._run(self._add(symbol), f"adding {symbol}")
        elif (
            purpose == "chain"
            and self._chain is not None
            and await self._run(self._chain.open(symbol), f"opening {symbol}'s option chain")
        ):
            self._show("chain")

    async def _run(self, action: Awaitable[object], what: str) -> bool:
        """Runs a command; its failure is a message, not a crash."""
        try:
            result = await action
        except Exception as error:
            details = getattr(error, "details", None)  # a gRPC error says why in its details
            self.model.say(f"{what} failed: {details() if callable(details) else error}")
            return False
        if isinstance(result, str):
            self.model.say(result)
        self.render_model()
        return True
