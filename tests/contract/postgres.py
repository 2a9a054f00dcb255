"""The PostgreSQL test database that ``scripts/postgres up`` starts, as its env file names it."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest

from saia.adapters.store import PostgresStore

VARIABLES = ("SAIA_PG_HOST", "SAIA_PG_PORT", "SAIA_PG_USER", "SAIA_PG_PASSWORD",
             "SAIA_PG_TEST_DBNAME")  # fmt: skip


def database_in(schema: str) -> PostgresStore:
    """The test database, in ``schema``; the calling test is skipped when it is not set up."""
    missing = [name for name in VARIABLES if not os.environ.get(name)]
    if missing:
        pytest.skip(
            f"PostgreSQL test database not configured ({', '.join(missing)} unset): "
            "run scripts/postgres up and source .dev/postgres/env"
        )
    return PostgresStore(
        dbname=os.environ["SAIA_PG_TEST_DBNAME"],
        host=os.environ["SAIA_PG_HOST"],
        port=int(os.environ["SAIA_PG_PORT"]),
        user=os.environ["SAIA_PG_USER"],
        password=os.environ["SAIA_PG_PASSWORD"],
        schema=schema,
    )


def connect(store: PostgresStore) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=store.host, port=store.port, user=store.user, password=store.password,
        dbname=store.dbname, autocommit=True,
    )
