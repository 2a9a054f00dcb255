"""Services and jobs as they were at a moment: the log's prefix up to it, replayed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from saia.adapters.store import EventLog
from saia.projections.service_state import ServiceState
from saia.replay.events import when
from saia.replay.source import recorded


def replay_until(events: Iterable[Any], moment: datetime) -> ServiceState:
    """Apply, in log order, every event whose domain time is not after ``moment``.

    A filter rather than a cut at the first later event: one transaction may hold
    several aggregates' events (a job's whole life, then the next job's), so log
    order is only roughly time order. Within an aggregate time never goes back.
    """
    state = ServiceState()
    for event in events:
        if when(event) <= moment:
            state.apply(event)
    return state


def state_at(
    log: EventLog, moment: datetime, on_batch: Callable[[int], None] | None = None
) -> ServiceState:
    return replay_until((r.event for r in recorded(log, on_batch=on_batch)), moment)
