"""Checks the log against signed checkpoints and names the first bad position.

The log and the checkpoint file are read side by side, one event and one
checkpoint at a time. At the first event whose (id, leaf) differs from the sealed
one, a one-event look-ahead on both sides tells a deletion, an insertion and a
swap of neighbours from an edit; the signed chain link confirms each checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from eventsourcing.persistence import Notification

from saia.adapters.store import EventLog
from saia.replay.chain import GENESIS, leaf, link
from saia.replay.checkpoints import read, signature_valid
from saia.replay.source import notifications


@dataclass(frozen=True, slots=True)
class Finding:
    position: int
    problem: str

    def __str__(self) -> str:
        return f"position {self.position}: {self.problem}"


@dataclass(frozen=True, slots=True)
class ChainReport:
    finding: Finding | None
    sealed: int  # events covered by valid checkpoints
    unsealed: int  # events after the last checkpoint: not yet provable


class _Lookahead:
    """The log's events with one event of look-ahead."""

    def __init__(self, events: Iterator[Notification]) -> None:
        self._events = events
        self._buffer: list[Notification] = []

    def peek(self, offset: int = 0) -> Notification | None:
        while len(self._buffer) <= offset:
            following = next(self._events, None)
            if following is None:
                return None
            self._buffer.append(following)
        return self._buffer[offset]

    def take(self) -> Notification | None:
        found = self.peek()
        if found is not None:
            self._buffer.pop(0)
        return found


def check_chain(
    log: EventLog,
    path: Path,
    key: Ed25519PublicKey,
    on_batch: Callable[[int], None] | None = None,
) -> ChainReport:
    events = _Lookahead(notifications(log, on_batch=on_batch))
    chain, count = GENESIS, 0
    for number, checkpoint in enumerate(read(path), start=1):
        if not signature_valid(checkpoint, key):
            return ChainReport(
                Finding(checkpoint.position, f"checkpoint {number} has no valid signature"),
                count,
                0,
            )
        for index, (expected_id, expected_leaf) in enumerate(checkpoint.events):
            found = events.peek()
            if found is None or found.id != expected_id or leaf(found).hex() != expected_leaf:
                following = (
                    checkpoint.events[index + 1] if index + 1 < len(checkpoint.events) else None
                )
                return ChainReport(
                    _classify(expected_id, expected_leaf, following, events), count, 0
                )
            chain = link(chain, found)
            events.take()
            count += 1
        if chain.hex() != checkpoint.link or count != checkpoint.count:
            return ChainReport(
                Finding(checkpoint.position, "chain link differs from the signed checkpoint"),
                count,
                0,
            )
    unsealed = 0
    while events.take() is not None:
        unsealed += 1
    return ChainReport(None, count, unsealed)


def _classify(
    expected_id: int,
    expected_leaf: str,
    following: tuple[int, str] | None,
    events: _Lookahead,
) -> Finding:
    found, after = events.peek(), events.peek(1)
    if found is None:
        return Finding(expected_id, "event missing (the log ends before it)")

    def same(event: Notification | None, sealed: tuple[int, str] | None) -> bool:
        return event is not None and sealed is not None and leaf(event).hex() == sealed[1]

    if (
        following is not None
        and same(found, following)
        and same(after, (expected_id, expected_leaf))
    ):
        return Finding(expected_id, f"events reordered: {expected_id} and {following[0]} swapped")
    if same(found, following):
        return Finding(expected_id, "event deleted")
    if same(after, (expected_id, expected_leaf)):
        return Finding(found.id, "event inserted")
    if found.id != expected_id:
        return Finding(
            min(found.id, expected_id), f"expected event {expected_id}, found event {found.id}"
        )
    return Finding(expected_id, "event changed")
