"""API keys by id: who holds each and whether it still opens the door. From the log only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, dataclass, replace
from typing import Any, ClassVar
from uuid import UUID

import orjson

from saia.domain.key import ApiKey
from saia.projections.runner import InMemory


@dataclass(frozen=True, slots=True)
class KeyView:
    id: UUID
    user: str
    secret_sha256: str
    label: str
    issued_at: float
    revoked: bool = False


class ApiKeys(InMemory):
    NAME: ClassVar[str] = "API keys"
    VERSION: ClassVar[int] = 1

    def __init__(self) -> None:
        self.keys: dict[UUID, KeyView] = {}

    def snapshot(self) -> bytes:
        return orjson.dumps([[view.id.hex, *astuple(view)[1:]] for view in self.keys.values()])

    def restore(self, snapshot: bytes | None) -> None:
        # The proxy reads ``keys`` without a lock: it gets the whole new dict or the old one.
        views = (KeyView(UUID(row[0]), *row[1:]) for row in orjson.loads(snapshot or b"[]"))
        self.keys = {view.id: view for view in views}

    def fingerprint(self) -> Any:
        return dict(self.keys)

    def apply(self, event: object) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _issued(self, e: ApiKey.Issued) -> None:
        self.keys[e.originator_id] = KeyView(e.originator_id, e.user, e.secret_sha256, e.label,
                                             e.timestamp.timestamp())  # fmt: skip

    def _revoked(self, e: ApiKey.Revoked) -> None:
        view = self.keys.get(e.originator_id)
        if view is not None:
            self.keys[e.originator_id] = replace(view, revoked=True)


_HANDLERS: dict[type, Callable[[ApiKeys, Any], None]] = {
    ApiKey.Issued: ApiKeys._issued,
    ApiKey.Revoked: ApiKeys._revoked,
}
