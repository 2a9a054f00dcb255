"""Accounting reports: the accounting projection's usage, grouped as asked."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from saia.projections.accounting import Accounting


class Grouping(StrEnum):
    USER = "user"
    SERVICE = "service"
    DAY = "day"
    MONTH = "month"


@dataclass(slots=True)
class Row:
    key: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_seconds: float = 0.0
    job_hours: float = 0.0  # per service only: jobs are not a user's or a day's


COLUMNS = (
    "key",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "request_seconds",
    "job_hours",
)


def _key(grouping: Grouping, user: str, service: str, day: str) -> str:
    match grouping:
        case Grouping.USER:
            return user
        case Grouping.SERVICE:
            return service
        case Grouping.DAY:
            return day
        case Grouping.MONTH:
            return day[:7]


def report(accounting: Accounting, grouping: Grouping, now: float | None = None) -> list[Row]:
    """Rows sorted by key; ``now`` counts running jobs up to then in job-hours."""
    rows: dict[str, Row] = {}
    for (user, service, day), usage in accounting.usage.items():
        key = _key(grouping, user, service, day)
        row = rows.setdefault(key, Row(key))
        row.requests += usage.requests
        row.errors += usage.errors
        row.prompt_tokens += usage.prompt_tokens
        row.completion_tokens += usage.completion_tokens
        row.request_seconds += usage.request_seconds
    if grouping is Grouping.SERVICE:
        services = set(accounting.job_seconds) | {s for s, _ in accounting.running_since.values()}
        for service in services:
            rows.setdefault(service, Row(service)).job_hours = accounting.job_hours(service, now)
    return [rows[key] for key in sorted(rows)]
