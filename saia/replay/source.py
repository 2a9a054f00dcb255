"""Streams the log in notification order, a batch at a time, so memory stays bounded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Notification

from saia.adapters.store import EventLog

BATCH = 1000


@dataclass(frozen=True, slots=True)
class Recorded:
    """One event as stored (for hashing) and as decoded (for projecting)."""

    notification: Notification
    event: Any

    @property
    def position(self) -> int:
        return self.notification.id


def notifications(
    log: EventLog, start: int = 0, on_batch: Callable[[int], None] | None = None
) -> Iterator[Notification]:
    """Every stored event after ``start``, oldest first."""
    position = start
    while True:
        batch = log.recorder.select_notifications(
            start=position, limit=BATCH, inclusive_of_start=False
        )
        if not batch:
            return
        yield from batch
        position = batch[-1].id
        if on_batch is not None:
            on_batch(position)


def recorded(
    log: EventLog, start: int = 0, on_batch: Callable[[int], None] | None = None
) -> Iterator[Recorded]:
    to_domain_event = log.mapper.to_domain_event
    for notification in notifications(log, start, on_batch):
        yield Recorded(notification, to_domain_event(notification))
