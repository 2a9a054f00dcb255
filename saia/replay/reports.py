"""Accounting reports: the accounting tables, grouped and cut to a period, by SQL.

Periods are whole days (whole hours when grouping by hour, which only the last
days have: see saia.projections.accounting.HOURLY_DAYS). Job-hours are a
service's over all time, running jobs counted up to the latest recorded request.
A unit is reported within its organisation: units of two organisations may
share a name. Requests no gateway named a group for count under the empty name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from saia.adapters.projection_db import ProjectionDb
from saia.projections.accounting import COUNTERS, Accounting


class Grouping(StrEnum):
    USER = "user"
    SERVICE = "service"
    DAY = "day"
    MONTH = "month"
    HOUR = "hour"
    ORG = "org"
    UNIT = "unit"
    PORTAL = "portal"


@dataclass(slots=True)
class Row:
    key: str
    org: str = ""  # the unit's organisation, by unit only
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    request_seconds: float = 0.0
    job_hours: float = 0.0  # per service only: jobs are not a user's or a day's


# A row's values after its key, as the report shows them.
COUNTERS_SHOWN = ("requests", "errors", "prompt_tokens", "completion_tokens", "bytes_in",
                  "bytes_out", "request_seconds", "job_hours")  # fmt: skip

# What each grouping's rows are keyed by, in the tables.
_KEYS: dict[Grouping, tuple[str, ...]] = {
    Grouping.USER: ("user_name",),
    Grouping.SERVICE: ("service",),
    Grouping.DAY: ("day",),
    Grouping.MONTH: ("substr(day, 1, 7)",),
    Grouping.HOUR: ("hour",),
    Grouping.ORG: ("org",),
    Grouping.UNIT: ("org", "unit"),
    Grouping.PORTAL: ("portal",),
}


def report(
    db: ProjectionDb,
    accounting: Accounting,
    grouping: Grouping,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Row]:
    """Rows sorted by key, from an accounting projection caught up in ``db``."""
    daily, hourly, jobs = Accounting.tables(db, Accounting.VERSION)
    period, table, width = ("hour", hourly, 13) if grouping is Grouping.HOUR else ("day", daily, 10)
    where, params = [], []
    if since is not None:
        where.append(f"{period} >= ?")
        params.append(since.isoformat()[:width])
    if until is not None:
        where.append(f"{period} <= ?")
        params.append(until.isoformat()[:width])
    keys = ", ".join(_KEYS[grouping])
    sums = ", ".join(f"SUM({name}) AS {name}" for name in COUNTERS)
    statement = (
        f"SELECT {keys}, {sums} FROM {table}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" GROUP BY {keys}"
    )
    named_by = len(_KEYS[grouping])
    with db.reading() as cursor:
        cursor.execute(statement, params)
        rows: dict[tuple[str, ...], Row] = {}
        for found in cursor.fetchall():
            key = tuple(str(k) for k in found[:named_by])
            # int(): PostgreSQL's SUM of a BIGINT is a NUMERIC, which arrives as a Decimal.
            rows[key] = _row(key, [int(n) for n in found[named_by:]])
        if grouping is not Grouping.SERVICE:
            return [rows[key] for key in sorted(rows)]  # the databases' collations differ
        cursor.execute(f"SELECT service, job_ms FROM {jobs}")
        job_ms = {str(service): int(ms) for service, ms in cursor.fetchall()}
    for service, since_at in accounting.running_since.values():
        running = max(0, round((accounting.latest - since_at) * 1000))
        job_ms[service] = job_ms.get(service, 0) + running
    for service, ms in job_ms.items():
        rows.setdefault((service,), Row(service)).job_hours = ms / 3_600_000
    return [rows[key] for key in sorted(rows)]


def _row(key: tuple[str, ...], counts: list[int]) -> Row:
    requests, errors, prompt, completion, bytes_in, bytes_out, request_ms = counts
    org = key[0] if len(key) > 1 else ""  # a unit's key is (org, unit)
    return Row(key[-1], org, requests, errors, prompt, completion, bytes_in, bytes_out,
               request_ms / 1000)  # fmt: skip


def columns_and_values(
    rows: Sequence[Row], grouping: Grouping
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """The report as a table: its column names and a tuple of values per row.

    The first column is named for the grouping (a unit's is preceded by its
    organisation's); job-hours, which belong to a service, only by service.
    """
    counters = COUNTERS_SHOWN if grouping is Grouping.SERVICE else COUNTERS_SHOWN[:-1]
    by_unit = grouping is Grouping.UNIT
    keys = ("org", grouping.value) if by_unit else (grouping.value,)
    values = [
        ((row.org, row.key) if by_unit else (row.key,))
        + tuple(getattr(row, column) for column in counters)
        for row in rows
    ]
    return (*keys, *counters), values
