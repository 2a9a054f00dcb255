"""Keeps projections up to date by reading the log from their tracked position.

SQLite cannot push new events to subscribers, so the runner polls: each call to
``catch_up`` reads every notification after the position it holds, in order, and
applies it to each projection. A fresh runner rebuilds from the start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from saia.adapters.store import EventLog

BATCH = 1000


class Projection(Protocol):
    def apply(self, event: object) -> None: ...


class ProjectionRunner:
    def __init__(self, log: EventLog, projections: Sequence[Projection]) -> None:
        self.log = log
        self.projections = list(projections)
        self.position = 0

    def catch_up(
        self,
        on_batch: Callable[[int], None] | None = None,
        guard: AbstractContextManager[object] | None = None,
    ) -> int:
        """Apply everything recorded since the last call; returns how many events.

        Each batch is read outside ``guard`` and applied inside it, so readers of
        the projections wait for the applying only, never for the store.
        """
        guard = guard if guard is not None else nullcontext()
        applied = 0
        to_domain_event = self.log.mapper.to_domain_event
        appliers = [p.apply for p in self.projections]
        while True:
            batch = self.log.recorder.select_notifications(
                start=self.position, limit=BATCH, inclusive_of_start=False
            )
            if not batch:
                return applied
            events = [to_domain_event(notification) for notification in batch]
            with guard:
                for event in events:
                    for apply in appliers:
                        apply(event)
            self.position = batch[-1].id
            applied += len(batch)
            if on_batch is not None:
                on_batch(self.position)
