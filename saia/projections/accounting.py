"""Accounting: usage per user x service x day, and job-hours per service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from saia.domain.job import Job
from saia.domain.request import Request


@dataclass(slots=True)
class Usage:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class OpenRequest:
    key: tuple[str, str, str]  # user, service, day (UTC, of arrival)
    started_at: float


class Accounting:
    def __init__(self) -> None:
        self.usage: dict[tuple[str, str, str], Usage] = {}
        self.job_seconds: dict[str, float] = {}  # service -> seconds of ended jobs
        self.running_since: dict[UUID, tuple[str, float]] = {}  # job -> (service, started)
        self._job_service: dict[UUID, str] = {}
        self._open: dict[UUID, OpenRequest] = {}

    def job_hours(self, service: str, now: float | None = None) -> float:
        """Hours of ended jobs, plus running ones up to ``now`` when given."""
        seconds = self.job_seconds.get(service, 0.0)
        if now is not None:
            seconds += sum(
                now - since for name, since in self.running_since.values() if name == service
            )
        return seconds / 3600.0

    def fingerprint(self) -> Any:
        return (
            dict(self.usage),
            dict(self.job_seconds),
            dict(self.running_since),
            dict(self._job_service),
            dict(self._open),
        )

    def apply(self, event: object) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _request_started(self, e: Request.Started) -> None:
        day = e.timestamp.date().isoformat()
        self._open[e.originator_id] = OpenRequest((e.user, e.service, day), e.timestamp.timestamp())

    def _request_finished(self, e: Request.Finished) -> None:
        usage = self._close(e.originator_id, e.timestamp.timestamp())
        if usage is None:
            return
        if e.status >= 400:
            usage.errors += 1
        usage.prompt_tokens += e.prompt_tokens
        usage.completion_tokens += e.completion_tokens

    def _request_rejected(self, e: Request.Rejected) -> None:
        usage = self._close(e.originator_id, e.timestamp.timestamp())
        if usage is not None:
            usage.errors += 1

    def _close(self, request: UUID, at: float) -> Usage | None:
        opened = self._open.pop(request, None)
        if opened is None:
            return None
        usage = self.usage.get(opened.key)
        if usage is None:
            usage = self.usage[opened.key] = Usage()
        usage.requests += 1
        usage.request_seconds += max(0.0, at - opened.started_at)
        return usage

    def _job_requested(self, e: Job.Requested) -> None:
        self._job_service[e.originator_id] = e.service

    def _job_started(self, e: Job.Started) -> None:
        service = self._job_service[e.originator_id]
        self.running_since[e.originator_id] = (service, e.timestamp.timestamp())

    def _job_ended(self, e: Job.Ended) -> None:
        running = self.running_since.pop(e.originator_id, None)
        if running is not None:
            service, since = running
            elapsed = max(0.0, e.timestamp.timestamp() - since)
            self.job_seconds[service] = self.job_seconds.get(service, 0.0) + elapsed


_HANDLERS: dict[type, Callable[[Accounting, Any], None]] = {
    Request.Started: Accounting._request_started,
    Request.Finished: Accounting._request_finished,
    Request.Rejected: Accounting._request_rejected,
    Job.Requested: Accounting._job_requested,
    Job.Started: Accounting._job_started,
    Job.Ended: Accounting._job_ended,
}
