"""The Service aggregate: a configured service, from registration to retirement."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from saia.domain.errors import InvalidTransition
from saia.domain.ids import service_id
from saia.domain.spec import ServiceSpec


class Service(Aggregate):
    TOPIC = "saia.Service"

    class Event(Aggregate.Event):
        TOPIC = "saia.Service.Event"

    class Registered(Aggregate.Created):
        TOPIC = "saia.Service.Registered"
        spec: dict[str, Any]

    class Reconfigured(Event):
        TOPIC = "saia.Service.Reconfigured"
        changes: dict[str, Any]

    class Retired(Event):
        TOPIC = "saia.Service.Retired"

    class Reinstated(Event):
        TOPIC = "saia.Service.Reinstated"
        spec: dict[str, Any]

    @staticmethod
    def create_id(spec: dict[str, Any], timestamp: datetime) -> UUID:
        return service_id(str(spec["id"]))

    @classmethod
    def register(cls, spec: ServiceSpec, at: datetime) -> Service:
        return cls(spec=spec.to_dict(), timestamp=at)

    @event(Registered)
    def __init__(self, spec: dict[str, Any], timestamp: datetime) -> None:
        self.spec = ServiceSpec.from_dict(spec)
        self.retired = False

    def reconfigure(self, changes: dict[str, Any], at: datetime) -> None:
        if self.retired:
            raise InvalidTransition(f"service {self.spec.id}", "retired", "be reconfigured")
        self.spec.changed(changes)  # validates before anything is recorded
        effective = {k: v for k, v in changes.items() if self.spec.to_dict().get(k) != v}
        if effective:
            self._reconfigured(changes=effective, timestamp=at)

    @event(Reconfigured)
    def _reconfigured(self, changes: dict[str, Any], timestamp: datetime) -> None:
        self.spec = self.spec.changed(changes)

    def retire(self, at: datetime) -> None:
        if self.retired:
            raise InvalidTransition(f"service {self.spec.id}", "retired", "be retired")
        self._retired(timestamp=at)

    @event(Retired)
    def _retired(self, timestamp: datetime) -> None:
        self.retired = True

    def reinstate(self, spec: ServiceSpec, at: datetime) -> None:
        """Bring a retired service back, with a (possibly new) specification."""
        if not self.retired:
            raise InvalidTransition(f"service {self.spec.id}", "active", "be reinstated")
        if spec.id != self.spec.id:
            raise InvalidTransition(f"service {self.spec.id}", "retired", f"become {spec.id}")
        self._reinstated(spec=spec.to_dict(), timestamp=at)

    @event(Reinstated)
    def _reinstated(self, spec: dict[str, Any], timestamp: datetime) -> None:
        self.spec = ServiceSpec.from_dict(spec)
        self.retired = False
