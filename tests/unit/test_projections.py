"""Projections: service state and accounting from a known history, incremental and rebuilt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from saia import catalog
from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import MemoryStore, SqliteStore
from saia.domain.job import DrainReason, FinalState, Job, Phase
from saia.domain.request import Request
from saia.domain.spec import ServiceSpec
from saia.hub import Hub
from saia.projections.accounting import HOURLY_DAYS, Accounting, daily_usage
from saia.projections.runner import ProjectionRunner
from saia.projections.service_state import ServiceState
from saia.replay.rebuild import contents, projections
from saia.replay.reports import Grouping, columns_and_values, report

T0 = datetime(2026, 11, 1, 23, 59, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def hub() -> Hub:
    hub = Hub(MemoryStore())
    catalog.add(hub, ServiceSpec.from_dict({"id": "chat", "sbatch": "s.sbatch"}), T0.timestamp())
    return hub


def run_job(hub: Hub, token: str, start: float, end: float | None) -> Job:
    job = Job.request("chat", 20001, token, 3600.0, at(start - 5), reason="demand")
    job.submitted("1", at(start - 4))
    job.started("node1", at(start))
    job.became_ready(at(start + 2))
    if end is not None:
        job.drain(DrainReason.SURPLUS, at(end - 1))
        job.end(FinalState.CANCELLED, at(end))
    hub.log.save(job)
    return job


def request(hub: Hub, user: str, start: float, seconds: float, status: int = 200,
            tokens: tuple[int, int] = (10, 20), groups: tuple[str, str, str] = ("", "", "")
            ) -> None:  # fmt: skip
    org, unit, portal = groups
    r = Request.start(uuid4(), user, "chat", "job", 100, at(start), org=org, unit=unit,
                      portal=portal)  # fmt: skip
    r.finish(status, "job", 500, tokens[0], tokens[1], at(start + seconds))
    hub.log.save(r)


def test_accounting_by_user_service_and_day(hub: Hub) -> None:
    """Requests, errors, tokens and seconds add up per user x service x UTC day of arrival."""
    request(hub, "alice", 0, 2.0)
    request(hub, "alice", 70, 1.0, status=500, tokens=(5, 0))  # next UTC day
    request(hub, "bob", 75, 0.5)
    rejected = Request.start(uuid4(), "bob", "chat", "", 10, at(80))
    rejected.reject(429, "rate limit", at(80))
    hub.log.save(rejected)
    hub.account()
    usage = daily_usage(hub.db)
    alice1 = usage[("alice", "chat", "2026-11-01")]
    assert (alice1.requests, alice1.errors, alice1.prompt_tokens, alice1.completion_tokens,
            alice1.bytes_in, alice1.bytes_out) == (1, 0, 10, 20, 100, 500)  # fmt: skip
    assert alice1.request_seconds == pytest.approx(2.0)
    alice2 = usage[("alice", "chat", "2026-11-02")]
    assert (alice2.requests, alice2.errors, alice2.prompt_tokens) == (1, 1, 5)
    bob = usage[("bob", "chat", "2026-11-02")]
    assert (bob.requests, bob.errors, bob.bytes_in, bob.bytes_out) == (2, 1, 110, 500)


def test_accounting_by_organisation_unit_and_portal(hub: Hub) -> None:
    """Requests count to the organisation, unit and portal they came with; a unit within
    its organisation; requests no gateway named groups for under the empty name."""
    request(hub, "alice", 0, 1.0, groups=("GWDG", "AI", "chat-ai"))
    request(hub, "alice", 10, 1.0, groups=("GWDG", "AI", "chat-ai"))
    request(hub, "bob", 20, 1.0, groups=("GWDG", "HPC", "api"))
    request(hub, "carol", 30, 1.0, tokens=(1, 2), groups=("UGOE", "AI", "chat-ai"))
    request(hub, "dave", 40, 1.0)
    hub.account()

    def rows(grouping: Grouping) -> list[tuple[str, str, int, int]]:
        return [(r.org, r.key, r.requests, r.prompt_tokens)
                for r in report(hub.db, hub.accounting, grouping)]  # fmt: skip

    assert rows(Grouping.ORG) == [("", "", 1, 10), ("", "GWDG", 3, 30), ("", "UGOE", 1, 1)]
    assert rows(Grouping.UNIT) == [("", "", 1, 10), ("GWDG", "AI", 2, 20),
                                   ("GWDG", "HPC", 1, 10), ("UGOE", "AI", 1, 1)]  # fmt: skip
    assert rows(Grouping.PORTAL) == [("", "", 1, 10), ("", "api", 1, 10),
                                     ("", "chat-ai", 3, 21)]  # fmt: skip
    assert [(r.key, r.requests) for r in report(hub.db, hub.accounting, Grouping.USER)] == [
        ("alice", 2), ("bob", 1), ("carol", 1), ("dave", 1)]
    assert daily_usage(hub.db)[("alice", "chat", "2026-11-01")].requests == 2


def test_a_report_as_a_table_names_its_columns_for_the_grouping(hub: Hub) -> None:
    """By unit, the organisation comes first; job-hours are shown by service only."""
    request(hub, "alice", 0, 1.0, groups=("GWDG", "AI", "chat-ai"))
    hub.account()
    columns, values = columns_and_values(report(hub.db, hub.accounting, Grouping.UNIT),
                                         Grouping.UNIT)  # fmt: skip
    assert columns[:3] == ("org", "unit", "requests") and "job_hours" not in columns
    assert values == [("GWDG", "AI", 1, 0, 10, 20, 100, 500, 1.0)]
    columns, _ = columns_and_values(report(hub.db, hub.accounting, Grouping.SERVICE),
                                    Grouping.SERVICE)  # fmt: skip
    assert (columns[0], columns[-1]) == ("service", "job_hours")


def test_job_hours_count_ended_and_running_jobs(hub: Hub) -> None:
    """Ended jobs count start to end; running ones up to the latest recorded event."""
    run_job(hub, "a" * 16, start=0, end=3600)
    run_job(hub, "b" * 16, start=0, end=None)
    hub.account()
    [row] = report(hub.db, hub.accounting, Grouping.SERVICE)
    assert row.job_hours == pytest.approx(2.0)  # one hour ended, one running up to then


def test_service_state_follows_a_job_and_drops_it_when_it_ends(hub: Hub) -> None:
    """Live jobs are listed with phase and node; ended jobs leave and are counted."""
    live = run_job(hub, "c" * 16, start=0, end=None)
    run_job(hub, "d" * 16, start=0, end=100)
    hub.refresh()
    view = hub.state.services["chat"]
    assert list(view.jobs) == [live.id]
    assert view.jobs[live.id].phase is Phase.READY and view.jobs[live.id].node == "node1"
    assert view.routing_targets() == [view.jobs[live.id]]
    assert view.startup_seconds == (7.0, 7.0)
    assert hub.state.ended[("chat", "cancelled")] == 1
    assert view.last_scale_at == at(99).timestamp()  # the surplus drain


def test_service_state_names_each_service_by_its_id_and_aliases(hub: Hub) -> None:
    """Ids and aliases name their service as the catalogue changes, after a restore too;
    a retired service's names name nothing."""
    catalog.edit(hub, "chat", {"aliases": ["org/chat", "chat:1"]}, T0.timestamp())
    catalog.add(hub, ServiceSpec.from_dict({"id": "code", "sbatch": "s.sbatch"}), T0.timestamp())
    hub.refresh()
    names = {name: hub.state.service_named(name) for name in ("chat", "org/chat", "chat:1")}
    assert names == dict.fromkeys(names, "chat")
    catalog.edit(hub, "chat", {"aliases": ["org/chat"]}, T0.timestamp())
    catalog.retire(hub, "code", T0.timestamp())
    hub.refresh()
    restored = ServiceState()
    restored.restore(hub.state.snapshot())
    for state in (hub.state, restored):
        assert state.model_names == {"chat": "chat", "org/chat": "chat"}
        assert state.service_named("code") is None


def test_incremental_updates_equal_a_rebuild(hub: Hub) -> None:
    """Catching up in many small steps gives the same projections as one rebuild."""
    for i in range(5):
        run_job(hub, f"{i:016x}", start=i * 10, end=i * 10 + 5 if i % 2 else None)
        request(hub, f"user{i % 2}", i * 10, 1.0)
        hub.refresh()
        hub.account()
    hub.checkpoint()
    scratch = ProjectionDb.scratch()
    fresh = projections()
    runner = ProjectionRunner(hub.log, scratch, fresh)
    assert runner.catch_up() == hub.log.last_position()
    runner.checkpoint()
    assert runner.position == hub.runner.position == hub.accounts.position
    assert contents(scratch, fresh) == contents(hub.db, projections())
    assert runner.catch_up() == 0


def test_hourly_rows_are_kept_for_the_last_days_only(hub: Hub) -> None:
    """Hours older than HOURLY_DAYS before the latest event leave the hourly table, not the
    daily one."""
    request(hub, "alice", 0, 1.0)
    hub.account()
    assert [r.key for r in report(hub.db, hub.accounting, Grouping.HOUR)] == ["2026-11-01T23"]
    request(hub, "alice", HOURLY_DAYS * 86400 + 3600, 1.0)
    hub.account()
    assert [r.key for r in report(hub.db, hub.accounting, Grouping.HOUR)] == ["2026-11-09T00"]
    assert [(r.key, r.requests) for r in report(hub.db, hub.accounting, Grouping.USER)] == [
        ("alice", 2)]


def test_a_report_is_cut_to_the_days_asked(hub: Hub) -> None:
    """--since and --until select whole days of arrival."""
    for day in range(4):
        request(hub, "alice", day * 86400 + 120, 1.0)
    hub.account()
    rows = report(hub.db, hub.accounting, Grouping.DAY, since=at(86400 + 3600),
                  until=at(2 * 86400 + 3600))  # fmt: skip
    assert [(r.key, r.requests) for r in rows] == [("2026-11-03", 1), ("2026-11-04", 1)]


def test_a_corrected_walltime_moves_the_jobs_expiry(hub: Hub) -> None:
    """Expiry (and so the replacement's timing) follows the time limit Slurm gave."""
    job = run_job(hub, "ffff000011112222", start=10, end=None)
    hub.refresh()
    view = hub.state.job(job.id)
    assert view is not None and view.expiry == at(10).timestamp() + 3600.0
    job.walltime_seen(1800.0, at(20))
    hub.log.save(job)
    hub.refresh()
    view = hub.state.job(job.id)
    assert view is not None and view.expiry == at(10).timestamp() + 1800.0


def test_a_changed_projection_is_built_again_and_its_old_version_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an upgrade raised their versions, the projections are built from the log once,
    hold what they held before, and the old versions' checkpoints and tables are gone."""
    store = SqliteStore(str(tmp_path / "saia.db"))
    old = Hub(store)
    catalog.add(old, ServiceSpec.from_dict({"id": "chat", "sbatch": "s.sbatch"}), T0.timestamp())
    run_job(old, "e" * 16, start=0, end=None)
    request(old, "alice", 10, 1.0)
    old.refresh()
    old.account()
    old.checkpoint()
    state, usage = old.state.snapshot(), daily_usage(old.db)
    old.close()

    state_version, accounting_version = ServiceState.VERSION + 1, Accounting.VERSION + 1
    monkeypatch.setattr(ServiceState, "VERSION", state_version)
    monkeypatch.setattr(Accounting, "VERSION", accounting_version)
    new = Hub(store)
    assert new.refresh() == new.log.last_position()  # built from the start
    new.account()
    assert new.state.snapshot() == state
    assert daily_usage(new.db) == usage
    assert new.db.versions(ServiceState.NAME) == [state_version]
    assert new.db.versions(Accounting.NAME) == [accounting_version]
    with new.db.reading() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE name LIKE 'saia_accounting_%'")
        assert {row[0] for row in cursor.fetchall()} == {
            f"saia_accounting_v{accounting_version}_{table}"
            for table in ("daily", "hourly", "jobs")}  # fmt: skip
    new.close()
    again = Hub(store)
    assert again.refresh() == 0  # checkpointed at the end of the build: nothing to apply
    again.close()


def test_runners_sharing_a_reader_decode_each_event_once(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's two runners follow the same events: the second takes the batches the first
    decoded, and both end where a lone runner would."""
    for i in range(3):
        request(hub, "alice", i, 1.0)
    decoded: list[object] = []
    decode = hub.log.mapper.to_domain_event

    def counted(notification: Any) -> Any:
        decoded.append(notification)
        return decode(notification)

    monkeypatch.setattr(hub.log.mapper, "to_domain_event", counted)
    hub.refresh()
    hub.account()
    assert len(decoded) == hub.log.last_position()
    assert hub.runner.position == hub.accounts.position == hub.log.last_position()
    assert daily_usage(hub.db)[("alice", "chat", "2026-11-01")].requests == 3


def test_requests_in_flight_when_the_hub_starts_are_abandoned_and_counted(hub: Hub) -> None:
    """A request whose end a crashed hub never recorded is closed at the next start: no longer
    in flight, counted once in accounting (without tokens), and not closed twice."""
    lost = Request.start(uuid4(), "bob", "chat", "", 10, at(5))
    hub.log.save(lost)
    hub.refresh()
    assert hub.state.services["chat"].inflight == 1
    assert hub.abandon_requests_in_flight(at(60).timestamp()) == 1
    assert hub.state.services["chat"].inflight == 0
    hub.account()
    usage = daily_usage(hub.db)[("bob", "chat", "2026-11-01")]
    assert (usage.requests, usage.errors, usage.prompt_tokens, usage.bytes_in) == (1, 0, 0, 10)
    assert hub.abandon_requests_in_flight(at(70).timestamp()) == 0
