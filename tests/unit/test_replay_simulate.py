"""simulate: recorded demand replayed through the policy against an instant-start cluster."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import NAMESPACE_URL, uuid5

import pytest

from saia.adapters.store import EventLog, SqliteStore
from saia.domain.job import DrainReason, FinalState, Job
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.replay.cli import main
from saia.replay.simulate import simulate
from saia.replay.source import recorded

T0 = datetime(2026, 11, 2, tzinfo=UTC)
SPEC = {"id": "chat", "sbatch": "s.sbatch", "idle_time": 60.0, "cooldown": 30.0}
BURSTS = (0, 1000, 2000)  # each wakes the service from zero; it idles out in between


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def recorded_history(log: EventLog) -> None:
    """Three bursts of requests, each served by one job that ends once idle: 3 jobs started."""
    log.save(Service.register(ServiceSpec.from_dict(SPEC), at(0)))
    for n, burst in enumerate(BURSTS):
        job = Job.request("chat", 20000 + n, f"tok{n}", 3600.0, at(burst), reason="demand")
        job.submitted(str(n), at(burst + 1))
        job.started("node", at(burst + 2))
        job.became_ready(at(burst + 3))
        requests = []
        for k in range(5):
            request = Request.start(uuid5(NAMESPACE_URL, f"sim/{n}/{k}"), "u", "chat", "", 1,
                                    at(burst + 6 * k))
            request.finish(200, f"tok{n}", 1, 1, 1, at(burst + 6 * k + 4))
            requests.append(request)
        job.drain(DrainReason.SURPLUS, at(burst + 100))
        job.end(FinalState.CANCELLED, at(burst + 101))
        log.save(job, *requests)


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    log = EventLog(SqliteStore(str(tmp_path / "saia.db")))
    recorded_history(log)
    return log


def test_recorded_settings_reproduce_recorded_jobs(log: EventLog) -> None:
    """With the settings the history was recorded under, as many jobs start as were recorded."""
    [outcome] = simulate((r.event for r in recorded(log)), [ServiceSpec.from_dict(SPEC)], 5.0)
    assert outcome.recorded_jobs_started == 3
    assert outcome.jobs_started == 3
    assert outcome.requests == 15
    assert outcome.waited.requests == 3  # the first request of each burst, from zero
    assert outcome.waited.longest_seconds <= 5.0


def test_longer_idle_time_keeps_one_job(log: EventLog) -> None:
    """With an idle time longer than the gaps, one job serves all bursts for longer."""
    slow = ServiceSpec.from_dict({**SPEC, "idle_time": 5000.0})
    [outcome] = simulate((r.event for r in recorded(log)), [slow], 5.0)
    assert outcome.jobs_started == 1
    assert outcome.waited.requests == 1
    assert outcome.job_hours > 3 * 60 / 3600


def test_simulate_command_reads_the_other_config(log: EventLog, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """saia-replay simulate --config OTHER.toml reports per service as JSON lines."""
    recorded_config = tmp_path / "saia.toml"
    recorded_config.write_text(f'placement = "login-node"\n[store]\nbackend = "sqlite"\n'
                               f'path = "{tmp_path / "saia.db"}"\n', encoding="utf-8")
    other = tmp_path / "other.toml"
    other.write_text('placement = "login-node"\n[store]\nbackend = "sqlite"\npath = "unused.db"\n'
                     '[[services]]\nid = "chat"\nsbatch = "s.sbatch"\nidle_time = 5000.0\n',
                     encoding="utf-8")
    code = main(["--config", str(recorded_config), "simulate", "--config", str(other), "--json"])
    assert code == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["service"], row["recorded_jobs_started"], row["jobs_started"]) == ("chat", 3, 1)
