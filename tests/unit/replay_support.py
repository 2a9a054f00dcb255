"""Shared helpers of the replay tests: the golden log in a store, and the raw edits a
tamperer could make to its rows.

The replay tests are written once against ``GoldenLog``; SQLite's is here, and
tests/contract gives PostgreSQL's.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Protocol
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from saia.adapters.store import EventLog, SqliteStore, StoreSettings

GOLDEN = Path(__file__).parent.parent / "data" / "golden" / "golden.jsonl"


def golden_events() -> list[StoredEvent]:
    rows = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    return [StoredEvent(UUID(r["originator_id"]), r["version"], r["topic"],
                        base64.b64decode(r["state"])) for r in rows]


def golden_store(tmp_path: Path) -> Path:
    """Writes saia.toml and a SQLite log holding the golden events; returns the config."""
    db = tmp_path / "saia.db"
    log = EventLog(SqliteStore(str(db)))
    log.recorder.insert_events(golden_events())
    log.close()
    config = tmp_path / "saia.toml"
    config.write_text(f'placement = "login-node"\n[store]\nbackend = "sqlite"\npath = "{db}"\n',
                      encoding="utf-8")
    return config


class GoldenLog(Protocol):
    """The golden log (positions 1 to 143) in one backend, and direct edits of its rows."""

    @property
    def config(self) -> Path: ...

    @property
    def store(self) -> StoreSettings: ...

    def first_request_of(self, user: str) -> int:
        """The position of the user's first Request.Started."""
        ...

    def replace_text(self, position: int, old: str, new: str) -> None:
        """Edit the stored state of one event in place."""
        ...

    def delete(self, *positions: int) -> None: ...

    def swap(self, first: int, second: int) -> None:
        """Exchange the contents of two rows, each keeping its position."""
        ...

    def insert_copy(self, position: int) -> None:
        """Move every later row 1000 on, and put a copy of the event (as a new version of its
        aggregate) at ``position + 1``."""
        ...

    def append_copy(self, position: int) -> None:
        """A copy of the event, as a new version of its aggregate, at the end of the log."""
        ...


class SqliteGolden:
    def __init__(self, tmp_path: Path) -> None:
        self.config = golden_store(tmp_path)
        self.store = SqliteStore(str(tmp_path / "saia.db"))
        self._db = sqlite3.connect(tmp_path / "saia.db", isolation_level=None)

    def first_request_of(self, user: str) -> int:
        row: tuple[int] = self._db.execute(
            "SELECT rowid FROM stored_events WHERE topic = 'saia.Request.Started' "
            "AND CAST(state AS TEXT) LIKE ? ORDER BY rowid LIMIT 1", (f'%"{user}"%',)).fetchone()
        return row[0]

    def replace_text(self, position: int, old: str, new: str) -> None:
        self._db.execute("UPDATE stored_events SET state = CAST(REPLACE(CAST(state AS TEXT), "
                         "?, ?) AS BLOB) WHERE rowid = ?", (old, new, position))

    def delete(self, *positions: int) -> None:
        self._db.executemany("DELETE FROM stored_events WHERE rowid = ?",
                             [(p,) for p in positions])

    def swap(self, first: int, second: int) -> None:
        rows = self._db.execute("SELECT rowid, originator_id, originator_version, topic, state "
                                "FROM stored_events WHERE rowid IN (?, ?) ORDER BY rowid",
                                (first, second)).fetchall()
        self.delete(first, second)
        for (rowid, *_), (_, *content) in zip(rows, reversed(rows), strict=True):
            self._db.execute("INSERT INTO stored_events (rowid, originator_id, originator_version, "
                             "topic, state) VALUES (?, ?, ?, ?, ?)", (rowid, *content))

    def insert_copy(self, position: int) -> None:
        self._db.execute("UPDATE stored_events SET rowid = rowid + 1000 WHERE rowid > ?",
                         (position,))
        self._db.execute("INSERT INTO stored_events (rowid, originator_id, originator_version, "
                         "topic, state) SELECT ?, originator_id, originator_version + 100, topic, "
                         "state FROM stored_events WHERE rowid = ?", (position + 1, position))

    def append_copy(self, position: int) -> None:
        self._db.execute("INSERT INTO stored_events (originator_id, originator_version, topic, "
                         "state) SELECT originator_id, originator_version + 100, topic, state "
                         "FROM stored_events WHERE rowid = ?", (position,))
