"""Redraw what changed, not the whole table: textual redraws every visible cell of a DataTable
after `clear()` + `add_row`, so a table refreshed on a timer would cost a full redraw per
frame even when nothing moved."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

Cell = str | Text
Rows = list[tuple[str, list[Cell]]]  # (row key, cells), in display order


def _look(cell: Cell) -> tuple[str, str]:
    # Text equality ignores style, and the ATM row differs from the others by style only.
    return (str(cell), str(cell.style)) if isinstance(cell, Text) else (cell, "")


class ShownRows:
    """What one table shows. `show` rebuilds the table only when its rows (keys or order) or
    columns changed, else updates just the cells whose text or style changed."""

    def __init__(self, table: DataTable[Cell]) -> None:
        self.table = table
        self._keys: list[str] = []
        self._looks: dict[str, list[tuple[str, str]]] = {}

    def reset(self) -> None:
        """The columns changed: the next `show` rebuilds."""
        self._keys, self._looks = [], {}

    def show(self, rows: Rows) -> None:
        table = self.table
        keys = [key for key, _ in rows]
        if keys != self._keys:
            self._rebuild(rows)
            return
        columns = list(table.columns)
        for key, cells in rows:
            before = self._looks[key]
            for index, cell in enumerate(cells):
                look = _look(cell)
                if look != before[index]:
                    table.update_cell(key, columns[index], cell, update_width=True)
                    before[index] = look

    def _rebuild(self, rows: Rows) -> None:
        table = self.table
        cursor = table.cursor_row
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        self._keys = [key for key, _ in rows]
        self._looks = {key: [_look(c) for c in cells] for key, cells in rows}
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))
