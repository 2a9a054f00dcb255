"""The Cluster aggregate: what saia observed of Slurm itself."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from saia.domain.ids import SAIA_NAMESPACE

CLUSTER_ID = UUID(int=SAIA_NAMESPACE.int ^ 1)


class Cluster(Aggregate):
    TOPIC = "saia.Cluster"

    class Event(Aggregate.Event):
        TOPIC = "saia.Cluster.Event"

    class Opened(Aggregate.Created):
        TOPIC = "saia.Cluster.Opened"

    class SlurmUnavailable(Event):
        TOPIC = "saia.Cluster.SlurmUnavailable"
        error: str

    class SlurmAvailable(Event):
        TOPIC = "saia.Cluster.SlurmAvailable"

    @staticmethod
    def create_id(timestamp: datetime) -> UUID:
        return CLUSTER_ID  # one per log

    @classmethod
    def open(cls, at: datetime) -> Cluster:
        return cls(timestamp=at)

    @event(Opened)
    def __init__(self, timestamp: datetime) -> None:
        self.available = True
        self.last_error = ""

    def unavailable(self, error: str, at: datetime) -> None:
        """Recorded on the change only, so an outage is one event, not one per pass."""
        if self.available or error != self.last_error:
            self._unavailable(error=error, timestamp=at)

    @event(SlurmUnavailable)
    def _unavailable(self, error: str, timestamp: datetime) -> None:
        self.available = False
        self.last_error = error

    def available_again(self, at: datetime) -> None:
        if not self.available:
            self._available(timestamp=at)

    @event(SlurmAvailable)
    def _available(self, timestamp: datetime) -> None:
        self.available = True
        self.last_error = ""
