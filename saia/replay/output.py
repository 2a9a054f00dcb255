"""Writing rows as a table, JSON lines or CSV."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson
from rich.console import Console
from rich.table import Table


def json_lines(rows: Iterable[dict[str, Any]], out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    for row in rows:
        stream.write(orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode() + "\n")


def csv_rows(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO | None = None
) -> None:
    writer = csv.writer(out or sys.stdout)
    writer.writerow(columns)
    writer.writerows(rows)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    view = Table(title=title)
    for column in columns:
        view.add_column(column)
    for row in rows:
        view.add_row(*(_cell(value) for value in row))
    Console().print(view)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
