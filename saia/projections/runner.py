"""Keeps projections up to date with the log, from the positions they were stored at.

A runner loads each projection as its last checkpoint left it and applies only
the events recorded after that position. Now and then, and when asked, it
checkpoints a projection: its rows and its new position in one transaction
(saia.adapters.projection_db), so that a crash leaves every projection as it was
at some position, never half-applied, and the next start goes on from there.

A projection whose version has no checkpoint yet (new, or changed by an upgrade)
is built from the start of the log, checkpointed as it goes so that an
interrupted build resumes; once it reaches the end of the log, the checkpoints
and tables of its older versions are dropped.

SQLite cannot push new events to subscribers, so the runner polls: each
``catch_up`` reads what was recorded since and applies it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ClassVar, Protocol

from eventsourcing.persistence import Notification

from saia.adapters.projection_db import Cursor, ProjectionConflict, ProjectionDb, Tracked
from saia.adapters.store import EventLog
from saia.projections.reader import BATCH, BatchReader

log = logging.getLogger(__name__)

# A long catch-up checkpoints each projection after this many events, so that a
# crash during it costs no more than this, and memory for counters stays bounded.
CHECKPOINT_EVERY = 50 * BATCH
# A build from the start says how far it got after every this many events.
PROGRESS_EVERY = 1_000_000
_END = 1 << 62  # past any position


class Projection(Protocol):
    """A read model of the log, kept in the store's database with its position."""

    NAME: ClassVar[str]
    VERSION: ClassVar[int]  # raised when what it holds or how it applies events changes
    # Checkpointed at the end of a catch-up once this many events wait to be written.
    LAZY: ClassVar[int]
    # Whether a checkpoint adds to what is stored (so it must start where the stored one
    # is), or replaces it whole.
    ADDITIVE: ClassVar[bool]

    def apply(self, event: object) -> None: ...

    def snapshot(self) -> bytes:
        """What it holds in memory, kept in its checkpoint row."""
        ...

    def restore(self, snapshot: bytes | None) -> None:
        """Back to a snapshot (None: empty), in place: readers keep their reference."""
        ...

    def tables(self, db: ProjectionDb, version: int) -> list[str]:
        """Its tables at a version (names only); empty for a projection held in memory."""
        ...

    def create(self, db: ProjectionDb) -> list[str]:
        """The statements that create its tables at the current version."""
        ...

    def write(self, cursor: Cursor, db: ProjectionDb) -> None:
        """Writes what changed in its tables since the last checkpoint (in its transaction)."""
        ...

    def written(self) -> None:
        """The checkpoint committed: what ``write`` wrote is no longer pending."""
        ...


class InMemory:
    """The table-less part of a projection that lives in memory and is checkpointed whole."""

    LAZY: ClassVar[int] = 10_000
    ADDITIVE: ClassVar[bool] = False

    def tables(self, db: ProjectionDb, version: int) -> list[str]:
        return []

    def create(self, db: ProjectionDb) -> list[str]:
        return []

    def write(self, cursor: Cursor, db: ProjectionDb) -> None:
        pass

    def written(self) -> None:
        pass


@dataclass(slots=True)
class _Entry:
    projection: Projection
    position: int = 0  # applied up to here
    stored: int | None = None  # where its checkpoint is; None: it has none
    older: tuple[int, ...] = ()  # versions to drop once this one reaches the end

    @property
    def pending(self) -> int:
        """A bound on the events applied since the checkpoint (positions may have gaps)."""
        return self.position - (self.stored or 0)


class ProjectionRunner:
    def __init__(
        self, log: EventLog, db: ProjectionDb, projections: Sequence[Projection],
        reader: BatchReader | None = None,
    ) -> None:  # fmt: skip
        self.log = log
        self.db = db
        self._reader = reader or BatchReader(log)
        self._entries = [_Entry(p) for p in projections]
        self._loaded = False

    @property
    def position(self) -> int:
        """Every projection reflects the log at least up to here."""
        return min((e.position for e in self._entries), default=0)

    def positions(self) -> dict[str, int]:
        return {e.projection.NAME: e.position for e in self._entries}

    def load(self) -> None:
        """Loads each projection as its checkpoint left it; once (``catch_up`` calls it)."""
        if self._loaded:
            return
        end = self.log.last_position()
        for entry in self._entries:
            projection = entry.projection
            self.db.create(projection.create(self.db))
            self._reload(entry)
            if entry.stored is None:
                entry.older = tuple(
                    v for v in self.db.versions(projection.NAME) if v != projection.VERSION
                )
                if end:
                    why = (f"changed (v{entry.older[-1]} -> v{projection.VERSION})"
                           if entry.older else "not in the store yet")  # fmt: skip
                    say = log.warning if end >= CHECKPOINT_EVERY else log.info
                    say(
                        "projection %s %s: building it from the log, %d events",
                        projection.NAME, why, end,
                    )
        self._loaded = True

    def _reload(self, entry: _Entry) -> None:
        projection = entry.projection
        tracked = self.db.tracked(projection.NAME, projection.VERSION)
        projection.restore(None if tracked is None else tracked.state)
        entry.stored = None if tracked is None else tracked.position
        entry.position = entry.stored or 0

    def catch_up(
        self,
        on_batch: Callable[[int], None] | None = None,
        guard: AbstractContextManager[object] | None = None,
        until: Mapping[str, int] | None = None,
    ) -> int:
        """Apply everything recorded since the projections' positions; returns how many
        events were read. ``until`` stops the named projections at a position.

        Each batch is read outside ``guard`` and applied inside it, so readers of
        the projections wait for the applying only, never for the store.
        """
        guard = guard if guard is not None else nullcontext()
        with guard:
            self.load()
        limits = {id(e): (until or {}).get(e.projection.NAME) for e in self._entries}
        bounds = [limit for limit in limits.values() if limit is not None]
        stop = max(bounds) if len(bounds) == len(limits) else None
        read = 0
        next_progress = PROGRESS_EVERY
        while True:
            behind = [e.position for e in self._entries if e.position < _limit(limits[id(e)])]
            batch, events = self._reader.read(min(behind), stop) if behind else ((), ())
            if not batch:
                # At the end. A projection built from the start is checkpointed at once
                # (built once, not at every start). A checkpoint refused here reloaded its
                # projection from another process's, which may be short of the end.
                if self._checkpoint(guard, lambda entry: entry.pending >= entry.projection.LAZY
                                    or (entry.stored is None and entry.position > 0)):  # fmt: skip
                    continue
                break
            with guard:
                for entry in self._entries:
                    self._apply(entry, batch, events, limits[id(entry)])
            read += len(batch)
            last = batch[-1].id
            if on_batch is not None:
                on_batch(last)
            self._checkpoint(guard, lambda entry: entry.pending >= CHECKPOINT_EVERY)
            if read >= next_progress:
                log.warning("projections at position %d of %d", last, self.log.last_position())
                next_progress += PROGRESS_EVERY
        if until is None:
            self._drop_older()
        return read

    @staticmethod
    def _apply(
        entry: _Entry, batch: Sequence[Notification], events: Sequence[object], limit: int | None
    ) -> None:
        """The events of the batch after the entry's position and up to its limit."""
        first, last = batch[0].id, batch[-1].id
        end = last if limit is None else min(limit, last)
        if entry.position >= end:
            return
        apply = entry.projection.apply
        if entry.position < first and end == last:
            for event in events:
                apply(event)
        else:
            for notification, event in zip(batch, events, strict=True):
                if entry.position < notification.id <= end:
                    apply(event)
        entry.position = end

    def checkpoint(self, guard: AbstractContextManager[object] | None = None) -> None:
        """Write every projection that has applied events since its checkpoint."""
        self._checkpoint(guard or nullcontext(), lambda entry: entry.pending > 0)

    def _checkpoint(
        self, guard: AbstractContextManager[object], due: Callable[[_Entry], bool]
    ) -> bool:
        """Checkpoints the projections that are due; whether any was refused and reloaded."""
        reloaded = False
        for entry in self._entries:
            if not due(entry):
                continue
            projection = entry.projection
            # Only the snapshot is taken under the guard: readers never wait for the store.
            # Nothing applies meanwhile: one thread at a time runs a runner.
            with guard:
                tracked = Tracked(entry.position, projection.snapshot())
            try:
                with self.db.transaction() as cursor:
                    self.db.track(cursor, projection.NAME, projection.VERSION,
                                  entry.stored, tracked, additive=projection.ADDITIVE)  # fmt: skip
                    projection.write(cursor, self.db)
            except ProjectionConflict as conflict:
                log.info("%s; reloading it", conflict)
                with guard:
                    self._reload(entry)
                reloaded = True
                continue
            projection.written()
            entry.stored = tracked.position
        return reloaded

    def _drop_older(self) -> None:
        """Once a rebuilt version has reached the end, the versions it replaces go."""
        for entry in self._entries:
            if not entry.older or entry.stored is None:
                continue
            projection = entry.projection
            with self.db.transaction() as cursor:
                for version in entry.older:
                    tables = projection.tables(self.db, version)
                    self.db.drop(cursor, projection.NAME, version, tables)
            log.warning("projection %s v%d is built; dropped v%s", projection.NAME,
                        projection.VERSION, ", v".join(map(str, entry.older)))  # fmt: skip
            entry.older = ()


def _limit(until: int | None) -> int:
    return _END if until is None else until
