"""The results table the benchmarks print: each figure beside its same-run baseline."""

from __future__ import annotations

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
    cells = [header] + [
        (r.name, r.figure, r.baseline, r.ratio, r.target, verdict(r.met)) for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for number, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if number == 0:
            print("  ".join("-" * width for width in widths))
