"""Extends the checkpoint file to the end of the log, signing each new checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from saia.adapters.store import EventLog
from saia.replay.chain import GENESIS, leaf, link
from saia.replay.checkpoints import Checkpoint, read, sign
from saia.replay.source import notifications

INTERVAL = 10_000  # events per checkpoint: bounds the memory of sealing and verifying


class SealRefused(Exception):
    """The log no longer matches what was sealed: verify first, never seal over it."""

    def __init__(self, position: int) -> None:
        super().__init__(f"the log differs from the checkpoint at position {position}: run verify")
        self.position = position


@dataclass(frozen=True, slots=True)
class Sealed:
    checkpoints: int  # written now
    position: int  # last position sealed


def seal(
    log: EventLog,
    out: Path,
    key: Ed25519PrivateKey,
    interval: int = INTERVAL,
    on_batch: Callable[[int], None] | None = None,
) -> Sealed:
    last: Checkpoint | None = None
    for last in read(out):  # noqa: B007 -- only the last checkpoint is needed
        pass
    chain, count = GENESIS, 0
    pending: list[tuple[int, str]] = []
    written, position = 0, (last.position if last else 0)
    with out.open("ab") as file:
        for notification in notifications(log, on_batch=on_batch):
            chain = link(chain, notification)
            count += 1
            if last is not None and count <= last.count:
                # Already sealed: recomputed only to continue the chain from its end.
                if count == last.count and chain.hex() != last.link:
                    raise SealRefused(last.position)
                continue
            pending.append((notification.id, leaf(notification).hex()))
            if len(pending) == interval:
                file.write(_checkpoint(notification.id, count, chain, pending, key).to_line())
                pending, written, position = [], written + 1, notification.id
        if last is not None and count < last.count:
            raise SealRefused(last.position)
        if pending:
            file.write(_checkpoint(pending[-1][0], count, chain, pending, key).to_line())
            written, position = written + 1, pending[-1][0]
    return Sealed(written, position)


def _checkpoint(
    position: int,
    count: int,
    chain: bytes,
    events: list[tuple[int, str]],
    key: Ed25519PrivateKey,
) -> Checkpoint:
    return sign(Checkpoint(position, count, chain.hex(), tuple(events)), key)
