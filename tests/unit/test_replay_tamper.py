"""Tamper evidence: rows edited, deleted, inserted or swapped in the store are caught by verify.

``TamperContract`` holds the tests; each backend subclasses it and says only how to
get the golden log into a fresh store (SQLite here, PostgreSQL in tests/contract).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from saia import hub
from saia.adapters.store import EventLog
from saia.domain.job import Job
from saia.projections.service_state import ServiceState
from saia.replay import rebuild
from saia.replay.cli import main
from saia.replay.source import recorded
from tests.unit.replay_support import GoldenLog, SqliteGolden

INTERVAL = "40"  # several checkpoints over the 143 golden events


def verify(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    folder = config.parent
    code = main(["--config", str(config), "verify", "--checkpoints", str(folder / "checkpoints"),
                 "--public-key", str(folder / "key.pub")])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


class Forgetful(ServiceState):
    """A service state that drops the n-th event it is given."""

    def __init__(self, dropped: int) -> None:
        super().__init__()
        self._dropped, self._seen = dropped, 0

    def apply(self, event: object) -> None:
        self._seen += 1
        if self._seen != self._dropped:
            super().apply(event)


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

    @pytest.mark.parametrize("fanout", [rebuild.FANOUT, 3])
    def test_projection_mismatch_names_the_first_diverging_event(
        self, golden: GoldenLog, fanout: int, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A live view that missed one event fails verify naming that event's position."""
        log = EventLog(golden.store)
        missed = [r.position for r in recorded(log) if isinstance(r.event, Job.Ended)][0]
        log.close()
        # The golden log's positions run from 1 without gaps: the n-th event is at n.
        monkeypatch.setattr(hub, "ServiceState", lambda: Forgetful(missed))
        monkeypatch.setattr(rebuild, "FANOUT", fanout)
        assert main(["--config", str(golden.config), "verify"]) == 1
        assert (f"MISMATCH position {missed}: service state rebuilt differs from the live view"
                in capsys.readouterr().err)


class TestSqliteTamper(TamperContract):
    @pytest.fixture
    def golden(self, tmp_path: Path) -> GoldenLog:
        return SqliteGolden(tmp_path)
