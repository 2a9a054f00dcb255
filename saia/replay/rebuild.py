"""The projections built again from the start of the log: to replace them, or to check them.

``rebuild`` drops a projection's checkpoint and tables and builds it from event
zero, checkpointing as it goes. ``compare_projections`` builds each projection in a
scratch database up to the position of its stored checkpoint and compares the two,
naming the first difference: a value of what the projection holds in memory, or a
row of one of its tables. These, with the other reports of saia-replay that walk
the log, are the only readers of the log from its start.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog, StoreSettings
from saia.projections.accounting import Accounting
from saia.projections.api_keys import ApiKeys
from saia.projections.runner import Projection, ProjectionRunner
from saia.projections.service_state import ServiceState

KINDS: tuple[Callable[[], Projection], ...] = (ServiceState, ApiKeys, Accounting)
SHOWN = 200  # characters of a differing value shown


def projections(names: Sequence[str] = ()) -> list[Projection]:
    """Fresh projections, all of them or those named."""
    fresh = [kind() for kind in KINDS]
    unknown = set(names) - {p.NAME for p in fresh}
    if unknown:
        raise ValueError(f"no projection named {', '.join(sorted(unknown))}; "
                         f"they are: {', '.join(p.NAME for p in fresh)}")  # fmt: skip
    return [p for p in fresh if not names or p.NAME in names]


def rebuild(
    log: EventLog, names: Sequence[str] = (), on_batch: Callable[[int], None] | None = None
) -> int:
    """Drops the named projections (all by default) and builds them from the start of the
    log; returns the position they reached. A hub that is running goes on serving from
    what it holds and takes the rebuilt checkpoint as its next one."""
    chosen = projections(names)
    db = ProjectionDb.beside(log)
    try:
        db.create([statement for p in chosen for statement in p.create(db)])
        versions = {p.NAME: db.versions(p.NAME) for p in chosen}
        with db.transaction() as cursor:
            for projection in chosen:
                for version in versions[projection.NAME]:
                    db.drop(cursor, projection.NAME, version, projection.tables(db, version))
        runner = ProjectionRunner(log, db, chosen)
        runner.catch_up(on_batch)
        runner.checkpoint()
        return runner.position
    finally:
        db.close()


@dataclass(frozen=True, slots=True)
class Mismatch:
    projection: str
    position: int  # of its stored checkpoint, which the rebuild was taken up to
    where: str  # the first difference

    def __str__(self) -> str:
        return (f"{self.projection} at position {self.position}: the stored projection "
                f"differs from a rebuild from the log: {self.where}")  # fmt: skip


def compare_projections(
    store: StoreSettings, on_batch: Callable[[int], None] | None = None
) -> list[Mismatch]:
    """Each stored projection against one rebuilt from the log up to the same position."""
    log = EventLog(store)
    db = ProjectionDb.beside(log)
    try:
        stored = contents(db, projections())
        with tempfile.TemporaryDirectory(prefix="saia-verify-") as folder:
            scratch = ProjectionDb.scratch(str(Path(folder) / "scratch.db"))
            try:
                fresh = projections()
                runner = ProjectionRunner(log, scratch, fresh)
                runner.catch_up(on_batch, until={n: pos for n, (pos, _) in stored.items()})
                runner.checkpoint()
                rebuilt = contents(scratch, fresh)
            finally:
                scratch.close()
    finally:
        db.close()
        log.close()
    mismatches = []
    for name, (position, content) in stored.items():
        where = first_difference(content, rebuilt[name][1])
        if where is not None:
            mismatches.append(Mismatch(name, position, where))
    return mismatches


def contents(db: ProjectionDb, chosen: Sequence[Projection]) -> dict[str, tuple[int, Any]]:
    """Per projection, its checkpoint's position and everything it holds, read together."""
    for projection in chosen:
        db.create(projection.create(db))
    contents: dict[str, tuple[int, Any]] = {}
    with db.reading(consistent=True) as cursor:
        for projection in chosen:
            tracked = db.tracked_in(cursor, projection.NAME, projection.VERSION)
            memory = orjson.loads(tracked.state) if tracked else None
            tables: dict[str, Any] = {}
            for table in projection.tables(db, projection.VERSION):
                cursor.execute(f"SELECT * FROM {table}")
                # Sorted here: the databases' collations order text differently.
                tables[table.rsplit(".", 1)[-1].strip('"')] = sorted(cursor.fetchall())
            contents[projection.NAME] = (
                tracked.position if tracked else 0,
                {"held in memory": memory, **tables},
            )
    return contents


def first_difference(stored: Any, rebuilt: Any, path: str = "") -> str | None:
    """Where two JSON-like values first differ, in reading order; None if they are equal."""
    if isinstance(stored, dict) and isinstance(rebuilt, dict):
        return _dict_difference(stored, rebuilt, path)
    if isinstance(stored, list | tuple) and isinstance(rebuilt, list | tuple):
        return _list_difference(stored, rebuilt, path)
    if stored != rebuilt:
        return f"{path}: stored {_shown(stored)}, rebuilt {_shown(rebuilt)}"
    return None


def _dict_difference(stored: dict[Any, Any], rebuilt: dict[Any, Any], path: str) -> str | None:
    for key in [*stored, *(k for k in rebuilt if k not in stored)]:
        here = f"{path}.{key}" if path else str(key)
        if key not in rebuilt:
            return f"{here}: stored {_shown(stored[key])}, missing from the rebuild"
        if key not in stored:
            return f"{here}: missing from the stored one, rebuilt {_shown(rebuilt[key])}"
        found = first_difference(stored[key], rebuilt[key], here)
        if found is not None:
            return found
    return None


def _list_difference(stored: Sequence[Any], rebuilt: Sequence[Any], path: str) -> str | None:
    """Rows and short lists are named whole; lists of structures are followed into."""
    for index, (a, b) in enumerate(zip(stored, rebuilt, strict=False)):
        if a == b:
            continue
        structured = isinstance(a, list) and any(isinstance(i, dict | list) for i in a)
        if isinstance(a, dict) or structured:
            return first_difference(a, b, f"{path}[{index}]")
        return f"{path}[{index}]: stored {_shown(a)}, rebuilt {_shown(b)}"
    if len(stored) == len(rebuilt):
        return None
    shorter = min(len(stored), len(rebuilt))
    extra = (stored if len(stored) > shorter else rebuilt)[shorter]
    return (f"{path}: {len(stored)} entries stored, {len(rebuilt)} rebuilt; "
            f"the first extra one is {_shown(extra)}")  # fmt: skip


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."
