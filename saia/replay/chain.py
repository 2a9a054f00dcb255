"""The hash chain over the log: each link commits to every event before it.

link = sha256(previous link | notification id | originator id | version | topic | state),
with lengths in front of the variable parts so that no two events hash alike by
moving bytes between fields. A per-event *leaf* (the same without the id and the
previous link) lets ``verify`` tell a changed event from a deleted or inserted one.
"""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.persistence import Notification

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

GENESIS = bytes(32)
LEAF_BYTES = 8  # enough to localize a difference; the signed link is what proves it


def leaf(notification: Notification) -> bytes:
    digest = hashlib.sha256()
    _content(digest, notification)
    return digest.digest()[:LEAF_BYTES]


def link(previous: bytes, notification: Notification) -> bytes:
    digest = hashlib.sha256(previous)
    digest.update(struct.pack(">Q", notification.id))
    _content(digest, notification)
    return digest.digest()


def _content(digest: Hash, notification: Notification) -> None:
    originator = notification.originator_id
    topic = notification.topic.encode()
    # Every recorder saia uses gives UUIDs; a str id is hashed as its text.
    digest.update(originator.bytes if isinstance(originator, UUID) else originator.encode())
    digest.update(struct.pack(">QI", notification.originator_version, len(topic)))
    digest.update(topic)
    digest.update(struct.pack(">Q", len(notification.state)))
    digest.update(notification.state)
