"""One job's life, from its request to its end, with the time between its steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from saia.adapters.store import EventLog
from saia.domain.ids import job_id
from saia.replay.events import fields, kind, when
from saia.replay.source import notifications


@dataclass(frozen=True, slots=True)
class Step:
    position: int
    kind: str
    at: datetime
    since_previous: float  # seconds
    since_request: float
    fields: dict[str, Any]


def job_aggregate_id(job: str) -> UUID:
    """A job is named by its aggregate id or by its token."""
    try:
        return UUID(job)
    except ValueError:
        return job_id(job)


def timeline(log: EventLog, job: str, on_batch: Callable[[int], None] | None = None) -> list[Step]:
    wanted = job_aggregate_id(job)
    steps: list[Step] = []
    first: datetime | None = None
    previous: datetime | None = None
    to_domain_event = log.mapper.to_domain_event
    for notification in notifications(log, on_batch=on_batch):
        # Decoding only this job's events keeps a search through a long log fast.
        if notification.originator_id != wanted:
            continue
        event = to_domain_event(notification)
        at = when(event)
        first = first or at
        previous = previous or at
        steps.append(
            Step(
                notification.id,
                kind(event),
                at,
                (at - previous).total_seconds(),
                (at - first).total_seconds(),
                fields(event),
            )
        )
        previous = at
    return steps
