"""Accounting reports: the accounting tables, grouped and cut to a period, by SQL.

Periods are whole days (whole hours when grouping by hour, which only the last
days have: see saia.projections.accounting.HOURLY_DAYS). Job-hours are a
service's over all time, running jobs counted up to the latest recorded request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from saia.adapters.projection_db import ProjectionDb
from saia.projections.accounting import COUNTERS, Accounting


class Grouping(StrEnum):
    USER = "user"
    SERVICE = "service"
    DAY = "day"
    MONTH = "month"
    HOUR = "hour"


@dataclass(slots=True)
class Row:
    key: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    request_seconds: float = 0.0
    job_hours: float = 0.0  # per service only: jobs are not a user's or a day's


COLUMNS = ("key", "requests", "errors", "prompt_tokens", "completion_tokens", "bytes_in",
           "bytes_out", "request_seconds", "job_hours")  # fmt: skip

_KEYS = {
    Grouping.USER: "user_name",
    Grouping.SERVICE: "service",
    Grouping.DAY: "day",
    Grouping.MONTH: "substr(day, 1, 7)",
    Grouping.HOUR: "hour",
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
    key = _KEYS[grouping]
    sums = ", ".join(f"SUM({name}) AS {name}" for name in COUNTERS)
    statement = (
        f"SELECT {key} AS grouped, {sums} FROM {table}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" GROUP BY {key}"
    )
    with db.reading() as cursor:
        cursor.execute(statement, params)
        rows = {str(k): _row(str(k), [int(n) for n in counts]) for k, *counts in cursor.fetchall()}
        if grouping is not Grouping.SERVICE:
            return [rows[key] for key in sorted(rows)]  # the databases' collations differ
        cursor.execute(f"SELECT service, job_ms FROM {jobs}")
        job_ms = {str(service): int(ms) for service, ms in cursor.fetchall()}
    for service, since_at in accounting.running_since.values():
        running = max(0, round((accounting.latest - since_at) * 1000))
        job_ms[service] = job_ms.get(service, 0) + running
    for service, ms in job_ms.items():
        rows.setdefault(service, Row(service)).job_hours = ms / 3_600_000
    return [rows[key] for key in sorted(rows)]


def _row(key: str, counts: list[int]) -> Row:
    requests, errors, prompt, completion, bytes_in, bytes_out, request_ms = counts
    return Row(key, requests, errors, prompt, completion, bytes_in, bytes_out, request_ms / 1000)
