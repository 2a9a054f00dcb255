"""The results table the benchmarks print: each figure beside its same-run baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    name: str
    figure: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: shown for comparison, not a target


def verdict(met: bool | None) -> str:
    return "" if met is None else "met" if met else "MISSED"


def print_table(rows: list[Row]) -> None:
    header = ("measurement", "figure", "baseline (same run)", "ratio", "target", "")
    print_columns(
        header, [(r.name, r.figure, r.baseline, r.ratio, r.target, verdict(r.met)) for r in rows]
    )


def print_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns under a header and a rule, as plain text for a code block."""
    cells = [tuple(header)] + [tuple(row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for number, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if number == 0:
            print("  ".join("-" * width for width in widths))
