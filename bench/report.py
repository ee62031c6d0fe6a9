"""Figures a benchmark measures, their targets, and how they are printed.

A figure with a target is PASS or MISS and carries its ratio to the target (value / target),
so every run reports both the absolute figure and how far it is from where it should be.
A figure without a target is information (row counts, generation time, rates).
"""

from __future__ import annotations

import io
import math
import pstats
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str = ""
    target: float | None = None
    op: str = "<="  # "<=": lower is better; ">=": higher is better

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if math.isnan(self.value):
            return False
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    @property
    def status(self) -> str:
        return {None: "INFO", True: "PASS", False: "MISS"}[self.passed]

    @property
    def ratio(self) -> float | None:
        if self.target is None or self.target == 0:
            return None
        return self.value / self.target

    def line(self) -> str:
        text = f"{self.name} {fmt(self.value)}"
        if self.unit:
            text += f" {self.unit}"
        if self.target is None:
            return text
        text += f" (target {self.op} {fmt(self.target)}) {self.status}"
        if self.ratio is not None:
            text += f"  ratio {self.ratio:.2f}"
        return text


def fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if float(value).is_integer() and abs(value) < 1e12:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


class Report:
    """Collects the figures of one run; each is printed as soon as it is measured."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []

    def add(self, name: str, value: float, unit: str = "", *, target: float | None = None, op: str = "<=") -> Figure:
        figure = Figure(name, float(value), unit, target, op)
        self.figures.append(figure)
        print(figure.line(), flush=True)
        return figure

    @staticmethod
    def note(text: str) -> None:
        """A detail line that is not a figure (breakdowns, context)."""
        print(f"  {text}", flush=True)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence; nan when it is empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_table(figures: Sequence[Figure], out: TextIO = sys.stdout) -> None:
    rows = [("figure", "value", "unit", "target", "ratio", "status")]
    rows.extend(
        (
            f.name,
            fmt(f.value),
            f.unit,
            f"{f.op} {fmt(f.target)}" if f.target is not None else "",
            f"{f.ratio:.2f}" if f.ratio is not None else "",
            f.status,
        )
        for f in figures
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print(
            "  ".join(
                cell.ljust(width) if i in (0, 2, 3, 5) else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip(),
            file=out,
        )
        if index == 0:
            print("  ".join("-" * w for w in widths), file=out)


def print_profile(path: Path, title: str) -> None:
    """Prints the top of a cProfile dump, by own time and by cumulative time."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(18)
    stats.sort_stats("cumulative").print_stats(22)
    print(f"  --- cProfile of {title} ({path}) ---")
    for line in out.getvalue().splitlines():
        if line.strip():
            print("    " + line)
