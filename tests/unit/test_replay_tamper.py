"""Tamper evidence: rows edited, deleted, inserted or swapped in SQLite are caught by verify."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from saia.replay.cli import main
from tests.unit.replay_support import golden_store

INTERVAL = "40"  # several checkpoints over the 143 golden events


@pytest.fixture
def sealed(tmp_path: Path) -> Path:
    """The golden log, sealed with a fresh key: returns the config path."""
    config = golden_store(tmp_path)
    assert main(["keygen", "--out", str(tmp_path / "key")]) == 0
    assert main(["--config", str(config), "seal", "--key", str(tmp_path / "key"),
                 "--out", str(tmp_path / "checkpoints"), "--interval", INTERVAL]) == 0
    return config


def verify(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    folder = config.parent
    code = main(["--config", str(config), "verify", "--checkpoints", str(folder / "checkpoints"),
                 "--public-key", str(folder / "key.pub")])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def database(config: Path) -> sqlite3.Connection:
    return sqlite3.connect(config.parent / "saia.db", isolation_level=None)


def request_started_row(db: sqlite3.Connection, user: str) -> int:
    row: tuple[int] = db.execute(
        "SELECT rowid FROM stored_events WHERE topic = 'saia.Request.Started' "
        "AND CAST(state AS TEXT) LIKE ? ORDER BY rowid LIMIT 1", (f'%"{user}"%',)).fetchone()
    return row[0]


def test_untouched_log_verifies(sealed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sealed, untouched log passes: every event sealed, projections equal."""
    code, text = verify(sealed, capsys)
    assert code == 0
    assert "chain ok: 143 events sealed, 0 not yet sealed" in text
    assert "projections ok" in text


def test_edited_event_is_named(sealed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An event whose stored state was edited fails verify at its position."""
    db = database(sealed)
    position = request_started_row(db, "alice")
    db.execute("UPDATE stored_events SET state = CAST(REPLACE(CAST(state AS TEXT), "
               "'alice', 'mallo') AS BLOB) WHERE rowid = ?", (position,))
    code, text = verify(sealed, capsys)
    assert code == 1
    assert f"position {position}: event changed" in text


def test_deleted_event_is_named(sealed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A deleted row fails verify naming the missing position."""
    database(sealed).execute("DELETE FROM stored_events WHERE rowid = 90")
    code, text = verify(sealed, capsys)
    assert code == 1
    assert "position 90: event deleted" in text


def test_inserted_event_is_named(sealed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A row slipped in between two sealed events fails verify at the new row's position."""
    db = database(sealed)
    db.execute("UPDATE stored_events SET rowid = rowid + 1000 WHERE rowid > 60")
    db.execute("INSERT INTO stored_events (rowid, originator_id, originator_version, topic, state) "
               "SELECT 61, originator_id, originator_version + 100, topic, state "
               "FROM stored_events WHERE rowid = 60")
    code, text = verify(sealed, capsys)
    assert code == 1
    assert "position 61: event inserted" in text


def test_swapped_events_are_named(sealed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two neighbouring rows swapped fail verify as reordered at the first of them."""
    db = database(sealed)
    rows = db.execute("SELECT rowid, originator_id, originator_version, topic, state "
                      "FROM stored_events WHERE rowid IN (100, 101) ORDER BY rowid").fetchall()
    db.execute("DELETE FROM stored_events WHERE rowid IN (100, 101)")
    for (rowid, *_), (_, *content) in zip(rows, reversed(rows), strict=True):
        db.execute("INSERT INTO stored_events (rowid, originator_id, originator_version, topic, "
                   "state) VALUES (?, ?, ?, ?, ?)", (rowid, *content))
    code, text = verify(sealed, capsys)
    assert code == 1
    assert "position 100: events reordered: 100 and 101 swapped" in text


def test_truncated_log_is_named(sealed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Deleting the newest sealed events fails verify at the first one missing."""
    database(sealed).execute("DELETE FROM stored_events WHERE rowid >= 140")
    code, text = verify(sealed, capsys)
    assert code == 1
    assert "position 140: event missing" in text


def test_wrong_key_is_refused(sealed: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """Checkpoints checked with another public key fail on their signature."""
    assert main(["keygen", "--out", str(tmp_path / "other")]) == 0
    (tmp_path / "key.pub").write_bytes((tmp_path / "other.pub").read_bytes())
    code, text = verify(sealed, capsys)
    assert code == 1
    assert "checkpoint 1 has no valid signature" in text


def test_seal_extends_the_file(sealed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """New events are reported as unsealed until seal runs again, then verified."""
    db = database(sealed)
    db.execute("INSERT INTO stored_events (originator_id, originator_version, topic, state) "
               "SELECT originator_id, originator_version + 100, topic, state "
               "FROM stored_events WHERE rowid = 3")
    assert "1 not yet sealed" in verify(sealed, capsys)[1]
    assert main(["--config", str(sealed), "seal", "--key", str(sealed.parent / "key"),
                 "--out", str(sealed.parent / "checkpoints")]) == 0
    code, text = verify(sealed, capsys)
    assert code == 0
    assert "chain ok: 144 events sealed, 0 not yet sealed" in text


def test_seal_refuses_a_changed_log(sealed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """seal will not extend checkpoints over a log that no longer matches them."""
    database(sealed).execute("DELETE FROM stored_events WHERE rowid = 5")
    code = main(["--config", str(sealed), "seal", "--key", str(sealed.parent / "key"),
                 "--out", str(sealed.parent / "checkpoints")])
    assert code == 1
    assert "differs from the checkpoint" in capsys.readouterr().err
