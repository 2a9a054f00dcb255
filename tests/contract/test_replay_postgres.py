"""saia-replay on PostgreSQL: the replay tests of tests/unit, run against the golden log
loaded into PostgreSQL and tampered with through psycopg.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from saia import config
from saia.adapters.store import EventLog, PostgresStore
from tests.contract.postgres import connect, database_in
from tests.unit.replay_support import GoldenLog, golden_events
from tests.unit.test_replay_golden import GoldenContract
from tests.unit.test_replay_reports import ReportsContract
from tests.unit.test_replay_tamper import TamperContract

TABLE = "saia_events"


@pytest.fixture(scope="session")
def replay_test_db() -> Iterator[PostgresStore]:
    """A schema of this process's own in the test database, dropped at the end.

    Other suites, and other runs of this one, share that database.
    """
    store = database_in(f"replay_{os.getpid()}")
    schema = sql.Identifier(store.schema)
    with connect(store) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
    EventLog(store).close()  # the library creates its tables, types and functions once
    yield store
    with connect(store) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))


class PostgresGolden:
    """The golden log at positions 1 to 143 of an emptied table."""

    def __init__(self, store: PostgresStore, folder: Path) -> None:
        self.store = store
        self._table = sql.Identifier(store.schema, TABLE)
        self._db = connect(store)
        self._db.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(self._table))
        log = EventLog(store)
        log.recorder.insert_events(golden_events())
        log.close()
        self.config = folder / "saia.toml"
        self.config.write_text(
            f'placement = "login-node"\n[store]\nbackend = "postgres"\n'
            f'dbname = "{store.dbname}"\nhost = "{store.host}"\nport = {store.port}\n'
            f'user = "{store.user}"\npassword = "{store.password}"\n', encoding="utf-8")

    def close(self) -> None:
        self._db.close()

    def _run(self, statement: str, params: tuple[Any, ...] = ()) -> psycopg.Cursor[Any]:
        return self._db.execute(sql.SQL(statement).format(table=self._table), params)

    def first_request_of(self, user: str) -> int:
        row = self._run("SELECT notification_id FROM {table} WHERE topic = 'saia.Request.Started' "
                        "AND convert_from(state, 'UTF8') LIKE %s ORDER BY notification_id LIMIT 1",
                        (f'%"{user}"%',)).fetchone()
        assert row is not None
        position: int = row[0]
        return position

    def replace_text(self, position: int, old: str, new: str) -> None:
        self._run("UPDATE {table} SET state = convert_to(replace(convert_from(state, 'UTF8'), "
                  "%s, %s), 'UTF8') WHERE notification_id = %s", (old, new, position))

    def delete(self, *positions: int) -> None:
        self._run("DELETE FROM {table} WHERE notification_id = ANY(%s)", (list(positions),))

    def swap(self, first: int, second: int) -> None:
        rows = self._run("SELECT notification_id, originator_id, originator_version, topic, state "
                         "FROM {table} WHERE notification_id IN (%s, %s) ORDER BY notification_id",
                         (first, second)).fetchall()
        self.delete(first, second)
        for (position, *_), (_, *content) in zip(rows, reversed(rows), strict=True):
            self._run("INSERT INTO {table} (notification_id, originator_id, originator_version, "
                      "topic, state) VALUES (%s, %s, %s, %s, %s)", (position, *content))

    def insert_copy(self, position: int) -> None:
        self._run("UPDATE {table} SET notification_id = notification_id + 1000 "
                  "WHERE notification_id > %s", (position,))
        self._run("INSERT INTO {table} (notification_id, originator_id, originator_version, "
                  "topic, state) SELECT %s, originator_id, originator_version + 100, topic, state "
                  "FROM {table} WHERE notification_id = %s", (position + 1, position))

    def append_copy(self, position: int) -> None:
        self._run("INSERT INTO {table} (originator_id, originator_version, topic, state) "
                  "SELECT originator_id, originator_version + 100, topic, state "
                  "FROM {table} WHERE notification_id = %s", (position,))


@pytest.fixture
def postgres_golden(
    replay_test_db: PostgresStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GoldenLog]:
    """The golden log in PostgreSQL, named by a saia.toml the replay commands read.

    saia.toml has no setting for a schema: the test's schema is added to the store it loads.
    """
    load = config.load

    def load_in_schema(path: Path) -> config.Config:
        loaded = load(path)
        assert isinstance(loaded.store, PostgresStore)
        return dataclasses.replace(
            loaded, store=dataclasses.replace(loaded.store, schema=replay_test_db.schema))

    monkeypatch.setattr(config, "load", load_in_schema)
    golden = PostgresGolden(replay_test_db, tmp_path)
    yield golden
    golden.close()


@pytest.mark.postgres
class TestPostgresGolden(GoldenContract):
    @pytest.fixture
    def golden(self, postgres_golden: GoldenLog) -> GoldenLog:
        return postgres_golden


@pytest.mark.postgres
class TestPostgresReports(ReportsContract):
    @pytest.fixture
    def golden(self, postgres_golden: GoldenLog) -> GoldenLog:
        return postgres_golden


@pytest.mark.postgres
class TestPostgresTamper(TamperContract):
    @pytest.fixture
    def golden(self, postgres_golden: GoldenLog) -> GoldenLog:
        return postgres_golden
