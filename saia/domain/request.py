"""The Request aggregate: one user request, from arrival to answer or refusal."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from saia.domain.errors import InvalidTransition


class Request(Aggregate):
    TOPIC = "saia.Request"

    class Event(Aggregate.Event):
        TOPIC = "saia.Request.Event"

    class Started(Aggregate.Created):
        TOPIC = "saia.Request.Started"
        user: str
        service: str
        job: str  # empty while the request waits for a backend
        bytes_in: int

    class Rejected(Event):
        """Refused without an answer from a backend (limits, no capacity, timeout)."""

        TOPIC = "saia.Request.Rejected"
        status: int
        reason: str

    class Finished(Event):
        TOPIC = "saia.Request.Finished"
        status: int
        job: str  # the backend that answered
        bytes_out: int
        prompt_tokens: int
        completion_tokens: int

    @classmethod
    def start(
        cls, id: UUID, user: str, service: str, job: str, bytes_in: int, at: datetime
    ) -> Request:
        return cls(id=id, user=user, service=service, job=job, bytes_in=bytes_in, timestamp=at)

    @event(Started)
    def __init__(
        self, id: UUID, user: str, service: str, job: str, bytes_in: int, timestamp: datetime
    ) -> None:
        # ``id`` is the proxy's request id; eventsourcing takes it as the aggregate id.
        self.user = user
        self.service = service
        self.job = job
        self.finished = False

    def reject(self, status: int, reason: str, at: datetime) -> None:
        if self.finished:
            raise InvalidTransition(f"request {self.id}", "finished", "be rejected")
        self._rejected(status=status, reason=reason, timestamp=at)

    @event(Rejected)
    def _rejected(self, status: int, reason: str, timestamp: datetime) -> None:
        self.finished = True

    def finish(
        self,
        status: int,
        job: str,
        bytes_out: int,
        prompt_tokens: int,
        completion_tokens: int,
        at: datetime,
    ) -> None:
        if self.finished:
            raise InvalidTransition(f"request {self.id}", "finished", "finish again")
        self._finished(
            status=status,
            job=job,
            bytes_out=bytes_out,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            timestamp=at,
        )

    @event(Finished)
    def _finished(
        self,
        status: int,
        job: str,
        bytes_out: int,
        prompt_tokens: int,
        completion_tokens: int,
        timestamp: datetime,
    ) -> None:
        self.job = job
        self.finished = True
