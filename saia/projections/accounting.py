"""Accounting: usage per user, service and day (and per hour for the last days), each with
the user's organisation, unit and portal, and the time each service's jobs ran, as tables
in the store's database.

Memory holds only what is open at the projection's position (requests started and
not yet finished, jobs not yet ended) and the counts added since the last
checkpoint; the checkpoint adds those to the tables (upserts) and keeps the open
part in its row. Times are summed in whole milliseconds, so that the totals do
not depend on how the events were split into checkpoints.

A request counts on the day and hour it arrived (UTC), when it finishes, is
refused or is abandoned (its end never recorded: counted, with no tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

import orjson

from saia.adapters.projection_db import Cursor, ProjectionDb
from saia.domain.job import Job
from saia.domain.request import Request

# The counters of a usage row, in table order.
COUNTERS = ("requests", "errors", "prompt_tokens", "completion_tokens", "bytes_in",
            "bytes_out", "request_ms")  # fmt: skip
# Hourly rows are kept for this many days before the latest event.
HOURLY_DAYS = 7

# Who a request is counted to, after its day or hour: a row of the tables each.
Account = tuple[str, str, str, str, str]  # user, service, org, unit, portal
ACCOUNT_COLUMNS = ("user_name", "service", "org", "unit", "portal")


@dataclass(frozen=True, slots=True)
class Usage:
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    bytes_in: int
    bytes_out: int
    request_seconds: float


def daily_usage(db: ProjectionDb) -> dict[tuple[str, str, str], Usage]:
    """Usage by user, service and day (over organisations, units and portals)."""
    daily = Accounting.tables(db, Accounting.VERSION)[0]
    totals = ", ".join(f"SUM({name}) AS {name}" for name in COUNTERS)  # named apart: see Cursor
    with db.reading() as cursor:
        cursor.execute(f"SELECT user_name, service, day, {totals} FROM {daily} "
                       "GROUP BY user_name, service, day")  # fmt: skip
        rows = cursor.fetchall()
    usage = {}
    for user, service, day, *sums in rows:
        # int(): PostgreSQL's SUM of a BIGINT is a NUMERIC, which arrives as a Decimal.
        requests, errors, prompt, completion, bytes_in, bytes_out, request_ms = map(int, sums)
        usage[(user, service, day)] = Usage(requests, errors, prompt, completion, bytes_in,
                                            bytes_out, request_ms / 1000)  # fmt: skip
    return usage


def _hour_text(hour: int) -> str:
    """Hours since the epoch as the tables name them: 2026-12-02T07 (UTC)."""
    return datetime.fromtimestamp(hour * 3600, UTC).isoformat()[:13]


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class Accounting:
    NAME: ClassVar[str] = "accounting"
    VERSION: ClassVar[int] = 2  # 2: the organisation, unit and portal of each row
    LAZY: ClassVar[int] = 1  # reports read the tables: every catch-up writes them
    ADDITIVE: ClassVar[bool] = True

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        # request -> its account, hour of arrival (since the epoch), arrival (s), bytes in
        self._open: dict[UUID, tuple[Account, int, float, int]] = {}
        self._job_service: dict[UUID, str] = {}  # jobs requested and not ended
        self.running_since: dict[UUID, tuple[str, float]] = {}  # job -> service, start
        self.latest = 0.0  # time of the latest event applied
        self._hourly: dict[tuple[int, Account], list[int]] = {}  # counts since the checkpoint
        self._jobs: dict[str, list[int]] = {}  # service -> ms, jobs ended

    # -- checkpoints ---------------------------------------------------------------------

    @classmethod
    def tables(cls, db: ProjectionDb, version: int) -> list[str]:
        """daily, hourly, jobs."""
        return [db.table(f"saia_accounting_v{version}_{name}")
                for name in ("daily", "hourly", "jobs")]  # fmt: skip

    def create(self, db: ProjectionDb) -> list[str]:
        daily, hourly, jobs = self.tables(db, self.VERSION)
        account = ", ".join(f"{name} TEXT NOT NULL" for name in ACCOUNT_COLUMNS)
        counters = ", ".join(f"{name} BIGINT NOT NULL" for name in COUNTERS)
        key = ", ".join(ACCOUNT_COLUMNS)
        return [
            f"CREATE TABLE IF NOT EXISTS {daily} (day TEXT NOT NULL, {account}, {counters}, "
            f"PRIMARY KEY (day, {key})){db.keyed}",
            f"CREATE TABLE IF NOT EXISTS {hourly} (hour TEXT NOT NULL, {account}, {counters}, "
            f"PRIMARY KEY (hour, {key})){db.keyed}",
            f"CREATE TABLE IF NOT EXISTS {jobs} (service TEXT PRIMARY KEY, "
            f"job_ms BIGINT NOT NULL, jobs BIGINT NOT NULL){db.keyed}",
        ]

    def snapshot(self) -> bytes:
        return orjson.dumps({
            "open": [[k.hex, list(account), *rest] for k, (account, *rest) in self._open.items()],
            "jobs": {k.hex: v for k, v in self._job_service.items()},
            "running": {k.hex: v for k, v in self.running_since.items()},
            "latest": self.latest,
        })

    def restore(self, snapshot: bytes | None) -> None:
        self._clear()
        if snapshot is None:
            return
        data = orjson.loads(snapshot)
        self._open = {UUID(k): ((a[0], a[1], a[2], a[3], a[4]), h, at, n)
                      for k, a, h, at, n in data["open"]}  # fmt: skip
        self._job_service = {UUID(k): v for k, v in data["jobs"].items()}
        self.running_since = {UUID(k): (v[0], v[1]) for k, v in data["running"].items()}
        self.latest = data["latest"]

    def write(self, cursor: Cursor, db: ProjectionDb) -> None:
        daily, hourly, jobs = self.tables(db, self.VERSION)
        texts = {hour: _hour_text(hour) for hour, _ in self._hourly}
        days: dict[tuple[str, Account], list[int]] = {}
        hours: dict[tuple[str, Account], list[int]] = {}
        cutoff = self.hourly_cutoff()
        for (hour, account), counts in self._hourly.items():
            text = texts[hour]
            total = days.setdefault((text[:10], account), [0] * len(COUNTERS))
            for i, n in enumerate(counts):
                total[i] += n
            if text >= cutoff:
                hours[(text, account)] = counts
        cursor.executemany(_upsert(daily, "day"), [(day, *account, *v)
                                                    for (day, account), v in days.items()])
        cursor.executemany(_upsert(hourly, "hour"), [(hour, *account, *v)
                                                     for (hour, account), v in hours.items()])
        cursor.execute(f"DELETE FROM {hourly} WHERE hour < ?", (cutoff,))
        cursor.executemany(
            f"INSERT INTO {jobs} AS t (service, job_ms, jobs) VALUES (?, ?, ?) "
            "ON CONFLICT (service) DO UPDATE SET job_ms = t.job_ms + excluded.job_ms, "
            "jobs = t.jobs + excluded.jobs",
            [(service, ms, n) for service, (ms, n) in self._jobs.items()],
        )

    def written(self) -> None:
        self._hourly = {}
        self._jobs = {}

    def hourly_cutoff(self) -> str:
        """The oldest hour the hourly table keeps: a function of the log, not of the clock."""
        if not self.latest:
            return ""
        return _hour_text(int(self.latest) // 3600 - HOURLY_DAYS * 24)

    # -- events --------------------------------------------------------------------------

    def apply(self, event: Any) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            at = event.timestamp.timestamp()
            self.latest = max(self.latest, at)
            handler(self, event, at)

    def _request_started(self, e: Request.Started, at: float) -> None:
        account = (e.user, e.service, e.org, e.unit, e.portal)
        self._open[e.originator_id] = (account, int(at) // 3600, at, e.bytes_in)

    def _request_finished(self, e: Request.Finished, at: float) -> None:
        counts = self._close(e.originator_id, at)
        if counts is not None:
            counts[1] += e.status >= 400
            counts[2] += e.prompt_tokens
            counts[3] += e.completion_tokens
            counts[5] += e.bytes_out

    def _request_rejected(self, e: Request.Rejected, at: float) -> None:
        counts = self._close(e.originator_id, at)
        if counts is not None:
            counts[1] += 1

    def _request_abandoned(self, e: Request.Abandoned, at: float) -> None:
        self._close(e.originator_id, at)  # a request; its answer unknown

    def _close(self, request: UUID, at: float) -> list[int] | None:
        opened = self._open.pop(request, None)
        if opened is None:
            return None
        account, hour, started, bytes_in = opened
        key = (hour, account)
        counts = self._hourly.get(key)
        if counts is None:
            counts = self._hourly[key] = [0] * len(COUNTERS)
        counts[0] += 1
        counts[4] += bytes_in
        counts[6] += _ms(at - started)
        return counts

    def _job_requested(self, e: Job.Requested, at: float) -> None:
        self._job_service[e.originator_id] = e.service

    def _job_started(self, e: Job.Started, at: float) -> None:
        self.running_since[e.originator_id] = (self._job_service[e.originator_id], at)

    def _job_gone(self, e: Job.Ended | Job.SubmissionFailed, at: float) -> None:
        self._job_service.pop(e.originator_id, None)
        running = self.running_since.pop(e.originator_id, None)
        if running is not None:
            service, since = running
            totals = self._jobs.setdefault(service, [0, 0])
            totals[0] += _ms(at - since)
            totals[1] += 1


def _upsert(table: str, period: str) -> str:
    key = ", ".join((period, *ACCOUNT_COLUMNS))
    names = ", ".join(COUNTERS)
    marks = ", ".join("?" * (1 + len(ACCOUNT_COLUMNS) + len(COUNTERS)))
    sums = ", ".join(f"{name} = t.{name} + excluded.{name}" for name in COUNTERS)
    return (
        f"INSERT INTO {table} AS t ({key}, {names}) VALUES ({marks}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {sums}"
    )


_HANDLERS: dict[type, Callable[[Accounting, Any, float], None]] = {
    Request.Started: Accounting._request_started,
    Request.Finished: Accounting._request_finished,
    Request.Rejected: Accounting._request_rejected,
    Request.Abandoned: Accounting._request_abandoned,
    Job.Requested: Accounting._job_requested,
    Job.Started: Accounting._job_started,
    Job.Ended: Accounting._job_gone,
    Job.SubmissionFailed: Accounting._job_gone,
}
