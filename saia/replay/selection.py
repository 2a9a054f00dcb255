"""Which events ``log`` shows: by service, job, user and time range.

Later events of an aggregate do not repeat its service or user, so an aggregate
is remembered when its first event matches; only matching aggregates are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from saia.domain.job import Job
from saia.domain.request import Request
from saia.domain.service import Service
from saia.replay.events import when


@dataclass(slots=True)
class Selection:
    service: str = ""
    job: str = ""  # a job id or its token
    user: str = ""
    since: datetime | None = None
    until: datetime | None = None
    _matched: set[UUID] = field(default_factory=set)

    def accepts(self, event: Any) -> bool:
        at = when(event)
        if self.since is not None and at < self.since:
            return False
        if self.until is not None and at > self.until:
            return False
        if not (self.service or self.job or self.user):
            return True
        if event.originator_id in self._matched:
            return True
        if self._first_matches(event):
            self._matched.add(event.originator_id)
            return True
        return False

    def _first_matches(self, event: Any) -> bool:
        if isinstance(event, Service.Registered):
            return not self.job and not self.user and event.spec.get("id") == self.service
        if isinstance(event, Job.Requested):
            return (
                not self.user
                and (not self.service or event.service == self.service)
                and (not self.job or self.job in (event.token, str(event.originator_id)))
            )
        if isinstance(event, Request.Started):
            return (
                (not self.service or event.service == self.service)
                and (not self.user or event.user == self.user)
                and (not self.job or event.job == self.job)
            )
        return False
