"""The Request aggregate: one user request, from arrival to answer or refusal.

Every request the proxy serves makes two events, so they are built in
eventsourcing's explicit style: ``_create`` and ``trigger_event`` with event
classes that apply themselves. The ``@event`` decorator would map each call's
arguments onto the event's fields first, which cost about as much again as
building the events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from saia.domain.errors import InvalidTransition


class Request(Aggregate):
    TOPIC = "saia.Request"

    class Event(Aggregate.Event):
        TOPIC = "saia.Request.Event"

    class Started(Aggregate.Created):
        TOPIC = "saia.Request.Started"
        class_version = 3
        user: str
        service: str
        job: str  # empty while the request waits for a backend
        bytes_in: int
        key: str  # id of the API key presented; empty where keys are not required
        # The user's organisation and unit, and the portal the request came through, as
        # a trusted gateway named them; empty where none did.
        org: str
        unit: str
        portal: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Requests recorded before keys were named came with no key, or an unnamed one."""
            state["key"] = ""

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            """Requests recorded before groups were named came with none."""
            state["org"] = state["unit"] = state["portal"] = ""

    class Rejected(Event):
        """Refused without an answer from a backend (limits, no capacity, timeout)."""

        TOPIC = "saia.Request.Rejected"
        status: int
        reason: str

        def apply(self, aggregate: Request) -> None:
            aggregate.finished = True

    class Abandoned(Event):
        """Its end was never recorded: the hub that served it stopped first (a crash, say)."""

        TOPIC = "saia.Request.Abandoned"
        reason: str

        def apply(self, aggregate: Request) -> None:
            aggregate.finished = True

    class Finished(Event):
        TOPIC = "saia.Request.Finished"
        status: int
        job: str  # the backend that answered
        bytes_out: int
        prompt_tokens: int
        completion_tokens: int

        def apply(self, aggregate: Request) -> None:
            aggregate.job = self.job
            aggregate.finished = True

    def __init__(self, user: str, service: str, job: str) -> None:
        # Called by Started with its fields of the same names.
        self.user = user
        self.service = service
        self.job = job
        self.finished = False

    @classmethod
    def start(
        cls, id: UUID, user: str, service: str, job: str, bytes_in: int, at: datetime,
        key: str = "", org: str = "", unit: str = "", portal: str = "",
    ) -> Request:  # fmt: skip
        # ``id`` is the proxy's request id; eventsourcing takes it as the aggregate id.
        return cls._create(
            cls.Started, id=id, user=user, service=service, job=job, bytes_in=bytes_in,
            key=key, org=org, unit=unit, portal=portal, timestamp=at,
        )

    def reject(self, status: int, reason: str, at: datetime) -> None:
        if self.finished:
            raise InvalidTransition(f"request {self.id}", "finished", "be rejected")
        self.trigger_event(self.Rejected, status=status, reason=reason, timestamp=at)

    def abandon(self, reason: str, at: datetime) -> None:
        if self.finished:
            raise InvalidTransition(f"request {self.id}", "finished", "be abandoned")
        self.trigger_event(self.Abandoned, reason=reason, timestamp=at)

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
        self.trigger_event(
            self.Finished,
            status=status,
            job=job,
            bytes_out=bytes_out,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            timestamp=at,
        )
