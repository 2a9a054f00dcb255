"""The ApiKey aggregate: a user's key to the proxy, issued and revoked as events.

Only the SHA-256 of the key's secret is ever recorded. Secrets are long random
strings, so a fast hash is enough: there is nothing to guess that a slow one
would protect. The secret itself is made outside the domain (no randomness here).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate

from saia.domain.errors import InvalidTransition


class ApiKey(Aggregate):
    TOPIC = "saia.ApiKey"

    class Event(Aggregate.Event):
        TOPIC = "saia.ApiKey.Event"

    class Issued(Aggregate.Created):
        TOPIC = "saia.ApiKey.Issued"
        user: str
        secret_sha256: str  # hex digest of the secret; the secret is never recorded
        label: str

    class Revoked(Event):
        TOPIC = "saia.ApiKey.Revoked"
        reason: str

        def apply(self, aggregate: ApiKey) -> None:
            aggregate.revoked = True

    def __init__(self, user: str, secret_sha256: str, label: str) -> None:
        # Called by Issued with its fields of the same names.
        self.user = user
        self.secret_sha256 = secret_sha256
        self.label = label
        self.revoked = False

    @classmethod
    def issue(cls, id: UUID, user: str, secret_sha256: str, label: str, at: datetime) -> ApiKey:
        return cls._create(cls.Issued, id=id, user=user, secret_sha256=secret_sha256,
                           label=label, timestamp=at)  # fmt: skip

    def revoke(self, reason: str, at: datetime) -> None:
        if self.revoked:
            raise InvalidTransition(f"api key {self.id}", "revoked", "be revoked again")
        self.trigger_event(self.Revoked, reason=reason, timestamp=at)
