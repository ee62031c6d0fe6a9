"""The terminal's tables redraw what changed: the same rows update only their changed cells
(a style-only change included: the ATM row), other rows or another order rebuild the table."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import DataTable

from terminal.tables import Cell, Rows, ShownRows


class OneTable(App[None]):
    def compose(self) -> ComposeResult:
        yield DataTable(id="t")


def _cells(table: DataTable[Cell]) -> list[list[tuple[str, str]]]:
    return [
        [(str(c), str(c.style) if isinstance(c, Text) else "") for c in table.get_row_at(r)]
        for r in range(table.row_count)
    ]


async def test_only_changed_cells_are_updated_and_new_rows_rebuild() -> None:
    app = OneTable()
    async with app.run_test():
        table: DataTable[Cell] = app.query_one("#t", DataTable)
        table.add_columns("Strike", "LTP")
        shown = ShownRows(table)
        updated: list[tuple[object, object]] = []
        real_update = table.update_cell

        def counting_update(row: str, column: object, value: Cell, *, update_width: bool = False) -> None:
            updated.append((row, value))
            real_update(row, column, value, update_width=update_width)  # type: ignore[arg-type]

        table.update_cell = counting_update  # type: ignore[method-assign,assignment]  # counts the calls
        first: Rows = [("100", ["100", "5.00"]), ("110", [Text("110", style="reverse"), Text("2.00", style="reverse")])]
        shown.show(first)
        table.move_cursor(row=1)
        assert _cells(table) == [[("100", ""), ("5.00", "")], [("110", "reverse"), ("2.00", "reverse")]]
        shown.show(first)
        assert updated == []  # nothing changed, nothing redrawn
        # One price moves and the ATM moves to 100 (a style-only change for the strikes).
        second: Rows = [
            ("100", [Text("100", style="reverse"), Text("5.05", style="reverse")]),
            ("110", ["110", "2.00"]),
        ]
        shown.show(second)
        assert len(updated) == 4 and table.row_count == 2 and table.cursor_row == 1
        assert _cells(table) == [[("100", "reverse"), ("5.05", "reverse")], [("110", ""), ("2.00", "")]]
        updated.clear()
        # The window moved: other row keys rebuild the table, the cursor kept within it.
        shown.show([("120", ["120", "1.00"])])
        assert updated == [] and _cells(table) == [[("120", ""), ("1.00", "")]] and table.cursor_row == 0
