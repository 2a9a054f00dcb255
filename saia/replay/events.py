"""Plain views of events: their short kind, their time and their fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

# Fields every event carries; the rest are the event's own.
ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


def kind(event: Any) -> str:
    """``Job.Started`` for the topic ``saia.Job.Started``: stable, since topics are explicit."""
    topic: str = getattr(type(event), "TOPIC", type(event).__qualname__)
    return topic.removeprefix("saia.")


def when(event: Any) -> datetime:
    at: datetime = event.timestamp
    return at


def fields(event: Any) -> dict[str, Any]:
    return {
        name: str(value) if isinstance(value, UUID) else value
        for name, value in vars(event).items()
        if name not in ENVELOPE
    }


def as_dict(position: int, event: Any) -> dict[str, Any]:
    return {
        "position": position,
        "at": when(event).isoformat(),
        "kind": kind(event),
        "originator": str(event.originator_id),
        "version": event.originator_version,
        "fields": fields(event),
    }


def fields_text(values: dict[str, Any]) -> str:
    """``key=value`` pairs: a table cell narrower than a dict's repr."""
    return " ".join(f"{name}={value}" for name, value in values.items())
