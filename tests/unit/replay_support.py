"""Shared helpers of the replay tests: the golden log loaded into a fresh SQLite file."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from saia.adapters.store import EventLog, SqliteStore

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
