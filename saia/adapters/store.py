"""The event store: the eventsourcing Application that owns the log.

SQLite (one file, the embedded default) or PostgreSQL (to scale out), chosen by
settings. The environment is built explicitly from settings: the process
environment is never consulted here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent, Transcoder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import Environment

from saia.adapters.transcoder import OrjsonMapper, OrjsonTranscoder


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

        ``before_commit`` is called once: on SQLite when the rows are in and the
        commit (the disk writes and the sync) is next, elsewhere before the insert.

        The library's SQLite recorder executes one INSERT per row to return each
        row's position; nobody here reads them, and that store has no listeners to
        notify. So SQLite gets one ``executemany`` in the library's own
        transaction: its writer lock, its rollback, its error types, its table
        and statement. Other stores insert through their recorder.
        """
        recorder = self.recorder
        if type(recorder) is not SQLiteApplicationRecorder:
            before_commit()
            recorder.insert_events(stored_events)
            return
        rows = [
            (
                s.originator_id.hex if isinstance(s.originator_id, UUID) else s.originator_id,
                s.originator_version,
                s.topic,
                s.state,
            )
            for s in stored_events
        ]
        with recorder.datastore.transaction(commit=True) as cursor:
            cursor.executemany(recorder.insert_events_statement, rows)
            before_commit()
