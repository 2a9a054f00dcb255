"""The event store: the eventsourcing Application that owns the log.

SQLite (one file, the embedded default) or PostgreSQL (to scale out), chosen by
settings. The environment is built explicitly from settings: the process
environment is never consulted here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing import persistence
from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent, Transcoder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import Environment

from saia.adapters.transcoder import OrjsonMapper, OrjsonTranscoder
from saia.domain.aggregates import AGGREGATES

# SQLite builds before 3.32 allow 999 parameters a statement, four to an event.
ROWS_PER_STATEMENT = 249


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class SqliteStore:
    path: str


@dataclass(frozen=True, slots=True)
class PostgresStore:
    dbname: str
    host: str
    port: int
    user: str
    password: str
    schema: str = ""
    create_table: bool = True


@dataclass(frozen=True, slots=True)
class MemoryStore:
    """In-process and gone on exit: for tests and what-if simulations."""


StoreSettings = SqliteStore | PostgresStore | MemoryStore


def store_env(store: StoreSettings) -> dict[str, str]:
    if isinstance(store, MemoryStore):
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    if isinstance(store, SqliteStore):
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": store.path,
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": store.dbname,
        "POSTGRES_HOST": store.host,
        "POSTGRES_PORT": str(store.port),
        "POSTGRES_USER": store.user,
        "POSTGRES_PASSWORD": store.password,
        "POSTGRES_ENABLE_DB_FUNCTIONS": "y",
        "CREATE_TABLE": "y" if store.create_table else "n",
    }
    if store.schema:
        env["POSTGRES_SCHEMA"] = store.schema
    return env


class EventLog(Application[UUID]):
    """The append-only log of everything saia decides and observes."""

    name = "saia"
    # Imported with the log, so that any process that reads it knows every event's topic.
    aggregates = AGGREGATES

    def __init__(self, store: StoreSettings, extra_env: Mapping[str, str] | None = None) -> None:
        env = store_env(store)
        # Loads of a long-lived job stay O(1) in the controller process: the cache
        # keeps the aggregate, and fast-forwards it by the few events it missed.
        env.setdefault("AGGREGATE_CACHE_MAXSIZE", "100000")
        env.update(extra_env or {})
        self._explicit_env = env
        super().__init__(env)

    def construct_env(self, name: str, env: Any = None) -> Environment:
        return Environment(name, dict(self._explicit_env))

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(self.construct_transcoder(), mapper_class=OrjsonMapper)

    def construct_transcoder(self) -> Transcoder:
        transcoder = OrjsonTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)

    def last_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    def append(
        self, stored_events: Sequence[StoredEvent], before_commit: Callable[[], None] = _nothing
    ) -> None:
        """Insert encoded events in one transaction, all or none; positions are not returned.

        ``before_commit`` is called once, before the batch commits (on SQLite
        while the writer lock is held).

        The library's SQLite recorder executes one INSERT per row to return each
        row's position; nobody here reads them, and that store has no listeners to
        notify. A batch that fits one statement goes in as one multi-row INSERT
        outside BEGIN...COMMIT, which SQLite runs as a transaction of its own: it
        inserts, writes the WAL and syncs in one call, without the GIL, while the
        producers just told run. (BEGIN, INSERT and COMMIT are three calls, and
        the COMMIT would wait for the GIL behind them.) It takes the library's
        writer connection and lock, and raises the library's error types. A larger
        batch goes through the library's own transaction with one ``executemany``.
        Other stores insert through their recorder.
        """
        recorder = self.recorder
        if type(recorder) is not SQLiteApplicationRecorder:
            before_commit()
            recorder.insert_events(stored_events)
            return
        rows = [_row(stored) for stored in stored_events]
        if len(rows) > ROWS_PER_STATEMENT:
            with recorder.datastore.transaction(commit=True) as cursor:
                cursor.executemany(recorder.insert_events_statement, rows)
                before_commit()
            return
        statement = f"INSERT INTO {recorder.events_table_name} VALUES " + ",".join(
            ["(?,?,?,?)"] * len(rows)
        )
        params = [value for row in rows for value in row]
        with (
            recorder.datastore.get_connection(commit=True) as connection,
            connection.cursor() as cursor,
            _as_library_errors(),
        ):
            before_commit()
            cursor.execute(statement, params)


def _row(stored: StoredEvent) -> tuple[str, int, str, bytes]:
    originator_id = stored.originator_id
    key = originator_id.hex if isinstance(originator_id, UUID) else originator_id
    return key, stored.originator_version, stored.topic, stored.state


@contextmanager
def _as_library_errors() -> Iterator[None]:
    """sqlite3's errors as eventsourcing's, as the library's SQLite transaction maps them."""
    try:
        yield
    except sqlite3.InterfaceError as error:
        raise persistence.InterfaceError(error) from error
    except sqlite3.DataError as error:
        raise persistence.DataError(error) from error
    except sqlite3.OperationalError as error:
        raise persistence.OperationalError(error) from error
    except sqlite3.IntegrityError as error:
        raise persistence.IntegrityError(error) from error
    except sqlite3.InternalError as error:
        raise persistence.InternalError(error) from error
    except sqlite3.ProgrammingError as error:
        raise persistence.ProgrammingError(error) from error
    except sqlite3.NotSupportedError as error:
        raise persistence.NotSupportedError(error) from error
    except sqlite3.DatabaseError as error:
        raise persistence.DatabaseError(error) from error
    except sqlite3.Error as error:
        raise persistence.PersistenceError(error) from error
