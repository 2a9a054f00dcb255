"""What ``saia keys issue|revoke|list`` do, on the event log: plain functions, no printing."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog
from saia.domain.key import ApiKey
from saia.projections.api_keys import ApiKeys, KeyView
from saia.projections.runner import ProjectionRunner
from saia.proxy.keys import issue_key


class KeyNotFound(Exception):
    def __init__(self, key_id: UUID) -> None:
        super().__init__(f"no API key with id {key_id}")
        self.key_id = key_id


def issue(log: EventLog, user: str, label: str, now: float) -> tuple[UUID, str]:
    """Record a new key of the user; returns its id and the key, to be shown once."""
    issued = issue_key(user, label, datetime.fromtimestamp(now, UTC))
    log.save(issued.aggregate)
    return issued.aggregate.id, issued.key


def revoke(log: EventLog, key_id: UUID, reason: str, now: float) -> None:
    try:
        key: object = log.repository.get(key_id)
    except AggregateNotFoundError:
        raise KeyNotFound(key_id) from None
    if not isinstance(key, ApiKey):
        raise KeyNotFound(key_id)
    key.revoke(reason, datetime.fromtimestamp(now, UTC))
    log.save(key)


def listing(log: EventLog) -> list[KeyView]:
    keys = ApiKeys()
    db = ProjectionDb.beside(log)
    try:
        ProjectionRunner(log, db, [keys]).catch_up()
    finally:
        db.close()
    return sorted(keys.keys.values(), key=lambda view: (view.user, view.issued_at))
