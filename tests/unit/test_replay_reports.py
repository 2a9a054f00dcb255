"""saia-replay log, state, timeline and accounting on the golden log.

``ReportsContract`` holds the tests; each backend subclasses it with its ``golden`` fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saia.replay.cli import main
from tests.unit.replay_support import GoldenLog, SqliteGolden


def run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert main(["--config", str(config), *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


class ReportsContract:
    """The tests every backend passes; subclasses provide the ``golden`` fixture."""

    @pytest.fixture
    def golden(self) -> GoldenLog:
        raise NotImplementedError

    @pytest.fixture
    def config(self, golden: GoldenLog) -> Path:
        return golden.config

    def test_log_filters_by_user_and_keeps_later_events(self, config: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
        """--user shows that user's requests with their Finished/Rejected events, nothing else."""
        rows = run(config, capsys, "log", "--user", "alice", "--json")
        kinds = {row["kind"] for row in rows}
        assert kinds == {"Request.Started", "Request.Finished", "Request.Rejected"}
        assert sum(row["kind"] == "Request.Started" for row in rows) == 20

    def test_log_filters_by_job_token_and_time(self, config: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """--job TOKEN with --until shows that job's events up to the given moment."""
        rows = run(config, capsys, "log", "--job", "tok1", "--until", "2026-10-31T22:42:00",
                   "--json")
        assert [row["kind"] for row in rows] == ["Job.Requested", "Job.Submitted", "Job.Started",
                                                 "Job.BecameReady"]

    def test_state_at_a_moment(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """state --at shows the jobs that were live then, in the phase they had."""
        rows = run(config, capsys, "state", "--at", "2026-10-31T22:41:00+00:00", "--json")
        phases = {row["service"]: [job["phase"] for job in row["jobs"]]  # type: ignore[attr-defined]
                  for row in rows}
        assert phases == {"chat": ["ready", "running"], "embed": ["ready"]}

    def test_timeline_has_durations(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """timeline gives each step's seconds since the previous step and since the request."""
        rows = run(config, capsys, "timeline", "tok0", "--json")
        assert [row["since_previous"] for row in rows] == [0.0, 1.0, 29.0, 60.0, 110.0, 4780.0,
                                                           10.0]
        assert rows[-1]["since_request"] == 4990.0

    def test_accounting_by_service_counts_job_hours(self, config: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
        """accounting --by service sums requests and errors and the hours of the service's jobs."""
        rows = run(config, capsys, "accounting", "--by", "service", "--format", "json")
        by_service = {row["service"]: row for row in rows}
        assert by_service["chat"]["requests"] == 48
        assert by_service["embed"]["requests"] == 12
        assert by_service["chat"]["job_hours"] == pytest.approx((4960 + 2370) / 3600)

    def test_accounting_csv_by_month(self, config: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        """accounting --format csv by month splits the history at the month boundary."""
        assert main(["--config", str(config), "accounting", "--by", "month",
                     "--format", "csv"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("month,requests,errors")
        assert [line.split(",")[0] for line in lines[1:]] == ["2026-10", "2026-11"]

    def test_accounting_by_org_unit_and_portal_of_a_log_without_groups(
        self, config: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A log recorded before groups were named counts every request under the empty
        organisation, unit and portal; by unit, the organisation is a column of its own."""
        for grouping in ("org", "portal"):
            rows = run(config, capsys, "accounting", "--by", grouping, "--format", "json")
            assert [(row[grouping], row["requests"]) for row in rows] == [("", 60)]
        assert main(["--config", str(config), "accounting", "--by", "unit",
                     "--format", "csv"]) == 0  # fmt: skip
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("org,unit,requests,errors")
        assert lines[1].startswith(",,60,")

    def test_bad_time_is_a_usage_error(self, config: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        """A time that is not ISO-8601 exits 2 with argparse's message, not a traceback."""
        with pytest.raises(SystemExit) as exit:
            main(["--config", str(config), "state", "--at", "yesterday"])
        assert exit.value.code == 2


class TestSqliteReports(ReportsContract):
    @pytest.fixture
    def golden(self, tmp_path: Path) -> GoldenLog:
        return SqliteGolden(tmp_path)
