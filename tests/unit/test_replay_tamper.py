"""Tamper evidence: rows edited, deleted, inserted or swapped in the store are caught by verify.

``TamperContract`` holds the tests; each backend subclasses it and says only how to
get the golden log into a fresh store (SQLite here, PostgreSQL in tests/contract).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from saia.adapters.projection_db import TRACKING, ProjectionDb
from saia.adapters.store import EventLog
from saia.projections.accounting import Accounting
from saia.projections.service_state import ServiceState
from saia.replay.cli import main
from tests.unit.replay_support import GoldenLog, SqliteGolden

INTERVAL = "40"  # several checkpoints over the 143 golden events


def verify(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    folder = config.parent
    code = main(["--config", str(config), "verify", "--checkpoints", str(folder / "checkpoints"),
                 "--public-key", str(folder / "key.pub")])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


class TamperContract:
    """The tests every backend passes; subclasses provide the ``golden`` fixture."""

    @pytest.fixture
    def golden(self) -> GoldenLog:
        raise NotImplementedError

    @pytest.fixture
    def sealed(self, golden: GoldenLog) -> GoldenLog:
        """The golden log, sealed with a fresh key kept next to its config."""
        folder = golden.config.parent
        assert main(["keygen", "--out", str(folder / "key")]) == 0
        assert main(["--config", str(golden.config), "seal", "--key", str(folder / "key"),
                     "--out", str(folder / "checkpoints"), "--interval", INTERVAL]) == 0
        return golden

    def test_untouched_log_verifies(self, sealed: GoldenLog,
                                    capsys: pytest.CaptureFixture[str]) -> None:
        """A sealed, untouched log passes: every event sealed, projections equal."""
        code, text = verify(sealed.config, capsys)
        assert code == 0
        assert "chain ok: 143 events sealed, 0 not yet sealed" in text
        assert "projections ok" in text

    def test_edited_event_is_named(self, sealed: GoldenLog,
                                   capsys: pytest.CaptureFixture[str]) -> None:
        """An event whose stored state was edited fails verify at its position."""
        position = sealed.first_request_of("alice")
        sealed.replace_text(position, "alice", "mallo")
        code, text = verify(sealed.config, capsys)
        assert code == 1
        assert f"position {position}: event changed" in text

    def test_deleted_event_is_named(self, sealed: GoldenLog,
                                    capsys: pytest.CaptureFixture[str]) -> None:
        """A deleted row fails verify naming the missing position."""
        sealed.delete(90)
        code, text = verify(sealed.config, capsys)
        assert code == 1
        assert "position 90: event deleted" in text

    def test_inserted_event_is_named(self, sealed: GoldenLog,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        """A row slipped in between two sealed events fails verify at the new row's position."""
        sealed.insert_copy(60)
        code, text = verify(sealed.config, capsys)
        assert code == 1
        assert "position 61: event inserted" in text

    def test_swapped_events_are_named(self, sealed: GoldenLog,
                                      capsys: pytest.CaptureFixture[str]) -> None:
        """Two neighbouring rows swapped fail verify as reordered at the first of them."""
        sealed.swap(100, 101)
        code, text = verify(sealed.config, capsys)
        assert code == 1
        assert "position 100: events reordered: 100 and 101 swapped" in text

    def test_truncated_log_is_named(self, sealed: GoldenLog,
                                    capsys: pytest.CaptureFixture[str]) -> None:
        """Deleting the newest sealed events fails verify at the first one missing."""
        sealed.delete(140, 141, 142, 143)
        code, text = verify(sealed.config, capsys)
        assert code == 1
        assert "position 140: event missing" in text

    def test_wrong_key_is_refused(self, sealed: GoldenLog,
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """Checkpoints checked with another public key fail on their signature."""
        folder = sealed.config.parent
        assert main(["keygen", "--out", str(folder / "other")]) == 0
        (folder / "key.pub").write_bytes((folder / "other.pub").read_bytes())
        code, text = verify(sealed.config, capsys)
        assert code == 1
        assert "checkpoint 1 has no valid signature" in text

    def test_seal_extends_the_file(self, sealed: GoldenLog,
                                   capsys: pytest.CaptureFixture[str]) -> None:
        """New events are reported as unsealed until seal runs again, then verified."""
        sealed.append_copy(3)
        assert "1 not yet sealed" in verify(sealed.config, capsys)[1]
        folder = sealed.config.parent
        assert main(["--config", str(sealed.config), "seal", "--key", str(folder / "key"),
                     "--out", str(folder / "checkpoints")]) == 0
        code, text = verify(sealed.config, capsys)
        assert code == 0
        assert "chain ok: 144 events sealed, 0 not yet sealed" in text

    def test_seal_refuses_a_changed_log(self, sealed: GoldenLog,
                                        capsys: pytest.CaptureFixture[str]) -> None:
        """seal will not extend checkpoints over a log that no longer matches them."""
        sealed.delete(5)
        folder = sealed.config.parent
        code = main(["--config", str(sealed.config), "seal", "--key", str(folder / "key"),
                     "--out", str(folder / "checkpoints")])
        assert code == 1
        assert "differs from the checkpoint" in capsys.readouterr().err

    def test_a_stored_accounting_row_unlike_the_log_fails_verify_naming_it(
        self, golden: GoldenLog, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A row of the stored accounting changed by hand fails verify, naming row and values."""
        config = str(golden.config)
        assert main(["--config", config, "rebuild"]) == 0
        assert main(["--config", config, "verify"]) == 0
        with stored_projections(golden) as db, db.transaction() as cursor:
            daily = Accounting.tables(db, Accounting.VERSION)[0]
            cursor.execute(f"UPDATE {daily} SET requests = requests + 1 WHERE day = "
                           f"(SELECT MAX(day) FROM {daily})")  # fmt: skip
        capsys.readouterr()
        assert main(["--config", config, "verify"]) == 1
        err = capsys.readouterr().err
        assert "MISMATCH accounting at position 143: the stored projection differs" in err
        assert f"saia_accounting_v{Accounting.VERSION}_daily[" in err

    def test_a_stored_service_state_unlike_the_log_fails_verify_naming_the_value(
        self, golden: GoldenLog, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A stored service state with one value changed fails verify, naming where it is."""
        config = str(golden.config)
        assert main(["--config", config, "rebuild"]) == 0
        with stored_projections(golden) as db:
            tracked = db.tracked(ServiceState.NAME, ServiceState.VERSION)
            assert tracked is not None
            edited = tracked.state.replace(b'"retired":false', b'"retired":true', 1)
            with db.transaction() as cursor:
                cursor.execute(f"UPDATE {db.table(TRACKING)} SET state = ? WHERE name = ?",
                               (edited, ServiceState.NAME))  # fmt: skip
        capsys.readouterr()
        assert main(["--config", config, "verify"]) == 1
        assert ("service state at position 143: the stored projection differs from a rebuild "
                "from the log: held in memory.services[0][1].retired: stored True, rebuilt False"
                in capsys.readouterr().err)


@contextmanager
def stored_projections(golden: GoldenLog) -> Iterator[ProjectionDb]:
    log = EventLog(golden.store)
    try:
        yield ProjectionDb.beside(log)
    finally:
        log.close()


class TestSqliteTamper(TamperContract):
    @pytest.fixture
    def golden(self, tmp_path: Path) -> GoldenLog:
        return SqliteGolden(tmp_path)
