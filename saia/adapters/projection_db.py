"""The store's own database, as projections use it: their tables, and for each projection
the log position it reflects, written in one transaction with its rows.

SQLite projections live in the log's file and PostgreSQL ones in the log's database
and schema, reached through the library's datastore, so that they share its
connection pool and its writer lock; the in-memory store gets a private SQLite
database. Statements are written once, with ``?`` placeholders, in the SQL that both
SQLite (3.24 or later, for upserts) and PostgreSQL accept.

Each projection has one row in ``saia_projections`` per version: the position
(notification id) it reflects and a small state of its own (what it holds in
memory, as JSON). eventsourcing's tracking records are the model. A tracking
record only refuses to go backwards, which is enough for a projection checkpointed
whole (the newest checkpoint wins) but not for one that adds to counters: two
writers that both started from position 100, one reaching 150 and the other 200,
would both count 101 to 150. So an additive checkpoint names the position it
started from, and is refused unless the stored row still holds it (compare and
set): the loser reloads and catches up from what the winner wrote.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from saia.adapters.store import EventLog

TRACKING = "saia_projections"


class ProjectionConflict(Exception):
    """Another process moved the projection on since it was loaded: reload, then go on."""

    def __init__(self, name: str, version: int, expected: int | None) -> None:
        super().__init__(
            f"projection {name} v{version} is no longer at position {expected}: "
            "another process checkpointed it"
        )
        self.name = name


@dataclass(frozen=True, slots=True)
class Tracked:
    position: int
    state: bytes


class Cursor:
    """A cursor that takes ``?`` placeholders and returns rows as tuples, on either database."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self._raw = raw
        self._postgres = dialect == "postgres"

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Runs one statement; returns how many rows it changed."""
        self._raw.execute(self._native(statement), params)
        return int(self._raw.rowcount)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._raw.executemany(self._native(statement), rows)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [self._row(row) for row in self._raw.fetchall()]

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._raw.fetchone()
        return None if row is None else self._row(row)

    def _native(self, statement: str) -> str:
        return statement.replace("?", "%s") if self._postgres else statement

    def _row(self, row: Any) -> tuple[Any, ...]:
        # The library's PostgreSQL connections return dicts, in column order: a statement
        # names each column apart (no two alike), or values are lost.
        return tuple(row.values()) if isinstance(row, dict) else tuple(row)


Dialect = Literal["sqlite", "postgres"]


class Connections(Protocol):
    def transaction(self, commit: bool) -> Any: ...


class ProjectionDb:
    """Tables of projections, beside the log they are built from."""

    def __init__(self, connections: Connections, dialect: Dialect, schema: str = "") -> None:
        self._connections = connections
        self.dialect: Dialect = dialect
        self._schema = schema
        self._tracking_ready = False

    @classmethod
    def beside(cls, log: EventLog) -> ProjectionDb:
        """The database the log is stored in; a private in-memory one for the in-memory log."""
        datastore = getattr(log.recorder, "datastore", None)
        if isinstance(datastore, PostgresDatastore):
            return cls(_Library(datastore), "postgres", datastore.schema)
        if isinstance(datastore, SQLiteDatastore):
            return cls(_Library(datastore), "sqlite")
        return cls(PrivateSqlite(), "sqlite")

    @classmethod
    def scratch(cls, path: str = ":memory:") -> ProjectionDb:
        """A database of its own (in memory by default): to build projections apart."""
        return cls(PrivateSqlite(path), "sqlite")

    def close(self) -> None:
        """Closes a private database; the log's own closes with the log."""
        if isinstance(self._connections, PrivateSqlite):
            self._connections.close()

    def table(self, name: str) -> str:
        return f'"{self._schema}"."{name}"' if self._schema else f'"{name}"'

    @property
    def blob(self) -> str:
        return "BYTEA" if self.dialect == "postgres" else "BLOB"

    @property
    def keyed(self) -> str:
        """Ends a CREATE TABLE whose rows are found by their primary key alone: SQLite then
        keeps them in that key's tree, one insert a row instead of two."""
        return "" if self.dialect == "postgres" else " WITHOUT ROWID"

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """One transaction, committed if the block ends without an error."""
        with self._connections.transaction(commit=True) as raw:
            yield Cursor(raw, self.dialect)

    @contextmanager
    def reading(self, consistent: bool = False) -> Iterator[Cursor]:
        """A transaction that only reads; ``consistent``: all its statements see one moment
        (SQLite's transactions always do; PostgreSQL's only when asked)."""
        with self._connections.transaction(commit=False) as raw:
            cursor = Cursor(raw, self.dialect)
            if consistent and self.dialect == "postgres":
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield cursor

    def create(self, statements: Sequence[str]) -> None:
        """Creates tables that do not exist yet (``CREATE TABLE IF NOT EXISTS ...``), and
        the checkpoints' table."""
        self._ensure_tracking()
        if not statements:
            return
        with self.transaction() as cursor:
            for statement in statements:
                cursor.execute(statement)

    # -- tracking -----------------------------------------------------------------------

    def _ensure_tracking(self) -> None:
        if self._tracking_ready:
            return
        with self.transaction() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table(TRACKING)} (name TEXT NOT NULL, "
                "version INTEGER NOT NULL, position BIGINT NOT NULL, "
                f"state {self.blob} NOT NULL, PRIMARY KEY (name, version))"
            )
        self._tracking_ready = True

    def tracked(self, name: str, version: int) -> Tracked | None:
        self._ensure_tracking()
        with self.reading() as cursor:
            return self.tracked_in(cursor, name, version)

    def tracked_in(self, cursor: Cursor, name: str, version: int) -> Tracked | None:
        cursor.execute(
            f"SELECT position, state FROM {self.table(TRACKING)} WHERE name = ? AND version = ?",
            (name, version),
        )
        row = cursor.fetchone()
        return None if row is None else Tracked(int(row[0]), bytes(row[1]))

    def versions(self, name: str) -> list[int]:
        """The versions of a projection that have rows here, oldest first."""
        self._ensure_tracking()
        with self.reading() as cursor:
            cursor.execute(
                f"SELECT version FROM {self.table(TRACKING)} WHERE name = ? ORDER BY version",
                (name,),
            )
            return [int(row[0]) for row in cursor.fetchall()]

    def track(
        self, cursor: Cursor, name: str, version: int, base: int | None, tracked: Tracked,
        *, additive: bool,
    ) -> None:  # fmt: skip
        """Records, in the caller's transaction, that the projection is at ``tracked``.

        An additive projection (one whose checkpoint adds to counters) moves only from
        ``base``, where it was loaded or last checkpointed (None: never written), and
        ProjectionConflict is raised if another writer moved it meanwhile. A projection
        checkpointed whole only replaces an older checkpoint: any later one is as good.
        """
        table = self.table(TRACKING)
        if not additive:
            cursor.execute(
                f"INSERT INTO {table} AS t (name, version, position, state) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, version) DO UPDATE SET position = excluded.position, "
                "state = excluded.state WHERE t.position < excluded.position",
                (name, version, tracked.position, tracked.state),
            )
            return
        if base is None:
            changed = cursor.execute(
                f"INSERT INTO {table} (name, version, position, state) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, version) DO NOTHING",
                (name, version, tracked.position, tracked.state),
            )
        else:
            changed = cursor.execute(
                f"UPDATE {table} SET position = ?, state = ? "
                "WHERE name = ? AND version = ? AND position = ?",
                (tracked.position, tracked.state, name, version, base),
            )
        if changed != 1:
            raise ProjectionConflict(name, version, base)

    def drop(self, cursor: Cursor, name: str, version: int, tables: Sequence[str]) -> None:
        """A projection's version gone, in the caller's transaction: its tables and row."""
        for table in tables:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(
            f"DELETE FROM {self.table(TRACKING)} WHERE name = ? AND version = ?", (name, version)
        )


class _Library:
    """Transactions on the library's own datastore (its pool, its writer lock)."""

    def __init__(self, datastore: SQLiteDatastore | PostgresDatastore) -> None:
        self._datastore = datastore

    @contextmanager
    def transaction(self, commit: bool) -> Iterator[Any]:
        with self._datastore.transaction(commit=commit) as cursor:
            # SQLite's wrapper keeps the sqlite3 cursor, which alone tells rowcount.
            yield getattr(cursor, "sqlite_cursor", cursor)


class PrivateSqlite:
    """An in-memory SQLite database shared by the threads of one process."""

    def __init__(self, path: str = ":memory:") -> None:
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self, commit: bool) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN")
            try:
                yield cursor
            except BaseException:
                self._connection.rollback()
                raise
            if commit:
                self._connection.commit()
            else:
                self._connection.rollback()
            cursor.close()

    def close(self) -> None:
        self._connection.close()
