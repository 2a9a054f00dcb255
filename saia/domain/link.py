"""The Link aggregate: the hub's SSH connection to the login node, up and down."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from saia.domain.ids import SAIA_NAMESPACE

LINK_ID = UUID(int=SAIA_NAMESPACE.int ^ 2)


class Link(Aggregate):
    TOPIC = "saia.Link"

    class Event(Aggregate.Event):
        TOPIC = "saia.Link.Event"

    class Opened(Aggregate.Created):
        TOPIC = "saia.Link.Opened"
        target: str  # user@host:port

    class Up(Event):
        TOPIC = "saia.Link.Up"

    class Down(Event):
        TOPIC = "saia.Link.Down"
        error: str

    @staticmethod
    def create_id(target: str, timestamp: datetime) -> UUID:
        return LINK_ID  # one per log

    @classmethod
    def open(cls, target: str, at: datetime) -> Link:
        return cls(target=target, timestamp=at)

    @event(Opened)
    def __init__(self, target: str, timestamp: datetime) -> None:
        self.target = target
        self.up = False
        self.last_error = ""

    def went_up(self, at: datetime) -> None:
        """Recorded on the change only: the keep-alives in between are not events."""
        if not self.up:
            self._up(timestamp=at)

    @event(Up)
    def _up(self, timestamp: datetime) -> None:
        self.up = True
        self.last_error = ""

    def went_down(self, error: str, at: datetime) -> None:
        if self.up or error != self.last_error:
            self._down(error=error, timestamp=at)

    @event(Down)
    def _down(self, error: str, timestamp: datetime) -> None:
        self.up = False
        self.last_error = error
