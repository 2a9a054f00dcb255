"""The store contract: what saia relies on from its event store, on every backend.

One base class holds the tests; each backend subclasses it and says only how
to reach an empty store, as eventsourcing's own recorder tests do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError
from psycopg import sql

from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog, PostgresStore, SqliteStore, StoreSettings
from saia.domain.cluster import CLUSTER_ID, Cluster
from saia.domain.job import DrainReason, FinalState, Job, Phase
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.projections.accounting import Accounting, daily_usage
from saia.projections.runner import ProjectionRunner
from saia.projections.service_state import ServiceState
from saia.recording import GroupCommitter
from saia.replay.rebuild import contents, projections
from tests.contract.postgres import connect, database_in

T0 = datetime(2026, 11, 1, 23, 59, 0, tzinfo=UTC)
CHAT = ServiceSpec.from_dict({"id": "chat", "sbatch": "vllm.sbatch", "maximum_number_instances": 2})
EMBED = ServiceSpec.from_dict({"id": "embed", "sbatch": "embed.sbatch"})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Probe(Aggregate):
    """Test-only: one event carrying every kind of value the transcoder must keep."""

    TOPIC = "tests.contract.Probe"

    class Event(Aggregate.Event):
        TOPIC = "tests.contract.Probe.Event"

    class Noted(Aggregate.Created):
        TOPIC = "tests.contract.Probe.Noted"
        payload: dict[str, Any]

    @event(Noted)
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload


def request(log: EventLog, user: str, start: float, status: int = 200) -> Request:
    r = Request.start(uuid4(), user, "chat", "job-a", 100, at(start))
    log.save(r)
    if status == 429:
        r.reject(429, "rate limit", at(start))
    else:
        r.finish(status, "job-a", 500, 10, 20, at(start + 1.5))
    log.save(r)
    return r


def history(log: EventLog, after_each_save: Callable[[], object]) -> None:
    """A small but complete history: services, a job's whole life, requests, a failure."""

    def save(*aggregates: Aggregate) -> None:
        log.save(*aggregates)
        after_each_save()

    chat = Service.register(CHAT, at(0))
    save(chat, Service.register(EMBED, at(0)))
    job = Job.request("chat", 20001, "token-a", 3600.0, at(1), reason="demand")
    save(job)
    job.submitted("101", at(2))
    save(job)
    job.started("node1", at(10))
    job.became_ready(at(30))
    save(job)
    failed = Job.request("embed", 20002, "token-b", 600.0, at(5), reason="minimum")
    failed.submission_failed("sbatch: error: invalid partition", at(6))
    save(failed)
    for i in range(3):
        job.heartbeat(i != 1, 0.01, at(40 + i))
        save(job)
        request(log, "alice", 50 + i, status=(200, 500, 429)[i])
        after_each_save()
    save(Request.start(uuid4(), "bob", "chat", "job-a", 10, at(90)))  # still in flight
    chat.reconfigure({"maximum_number_instances": 3}, at(100))
    save(chat)
    job.drain(DrainReason.SURPLUS, at(200))
    job.request_cancel("surplus", at(201))
    job.end(FinalState.CANCELLED, at(205))
    save(job)


class StoreContract:
    """The tests every backend passes; subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> StoreSettings:
        raise NotImplementedError

    @pytest.fixture
    def log(self, store: StoreSettings) -> Iterator[EventLog]:
        log = EventLog(store)
        yield log
        log.close()

    def test_each_kind_of_aggregate_is_saved_and_got_back(self, log: EventLog) -> None:
        """Service, Job, Request and Cluster come back from the store as they were saved."""
        service = Service.register(CHAT, at(0))
        service.reconfigure({"maximum_number_instances": 4}, at(1))
        job = Job.request("chat", 20001, "token-a", 3600.0, at(2), reason="demand")
        job.submitted("101", at(3))
        job.started("node7", at(4))
        r = Request.start(uuid4(), "alice", "chat", str(job.id), 120, at(5))
        r.finish(200, str(job.id), 900, 11, 22, at(6))
        cluster = Cluster.open(at(0))
        cluster.unavailable("slurmctld down", at(7))
        log.save(service, job, r, cluster)

        got_service: object = log.repository.get(service.id)
        assert isinstance(got_service, Service)
        assert (got_service.spec, got_service.version) == (service.spec, 2)
        assert got_service.spec.maximum_number_instances == 4
        got_job: object = log.repository.get(job.id)
        assert isinstance(got_job, Job)
        assert (got_job.phase, got_job.node) == (Phase.RUNNING, "node7")
        assert got_job.slurm_job_id == "101"
        got_request: object = log.repository.get(r.id)
        assert isinstance(got_request, Request)
        assert got_request.finished and got_request.version == 2
        assert got_request.job == str(job.id)
        got_cluster: object = log.repository.get(CLUSTER_ID)
        assert isinstance(got_cluster, Cluster)
        assert (got_cluster.available, got_cluster.last_error) == (False, "slurmctld down")

    def test_events_are_stored_under_their_explicit_topics(self, log: EventLog) -> None:
        """The raw notifications carry saia's stable topics, not module paths."""
        job = Job.request("chat", 20001, "token-a", 3600.0, at(0))
        job.submitted("101", at(1))
        r = Request.start(uuid4(), "alice", "chat", "", 1, at(2))
        r.reject(503, "no capacity", at(3))
        log.save(Service.register(CHAT, at(0)), job, r, Cluster.open(at(0)))
        topics = [n.topic for n in log.recorder.select_notifications(start=None, limit=100)]
        assert topics == [
            "saia.Service.Registered",
            "saia.Job.Requested",
            "saia.Job.Submitted",
            "saia.Request.Started",
            "saia.Request.Rejected",
            "saia.Cluster.Opened",
        ]

    def test_notifications_come_in_saving_order_with_increasing_ids(self, log: EventLog) -> None:
        """The log's order is the order of saving, and its ids only grow."""
        first, second, third = (Request.start(uuid4(), "u", "chat", "", i, at(i)) for i in range(3))
        log.save(first, second)
        log.save(third)
        notifications = log.recorder.select_notifications(start=None, limit=100)
        assert [n.originator_id for n in notifications] == [first.id, second.id, third.id]
        ids = [n.id for n in notifications]
        assert ids == sorted(set(ids))
        assert log.last_position() == ids[-1]

    def test_notifications_page_from_an_exclusive_position(self, log: EventLog) -> None:
        """Pages after a position, of at most ``limit``, cover the log once and in order."""
        saved = [Request.start(uuid4(), "u", "chat", "", i, at(i)) for i in range(25)]
        for r in saved:
            log.save(r)
        pages: list[list[UUID]] = []
        position = 0
        while page := log.recorder.select_notifications(
            start=position, limit=10, inclusive_of_start=False
        ):
            pages.append([UUID(str(n.originator_id)) for n in page])
            position = page[-1].id
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [i for p in pages for i in p] == [r.id for r in saved]

    def test_the_transcoder_keeps_types_through_the_store(self, store: StoreSettings) -> None:
        """UTC datetimes, UUIDs, nested dicts and lists, and unicode come back equal and typed."""
        payload = {
            "at": datetime(2026, 11, 1, 12, 30, 15, 123456, tzinfo=UTC),
            "id": uuid4(),
            "nested": {"list": [1, 2.5, "x", None, True, {"ids": [uuid4()]}], "empty": {}},
            "text": "Grüße aus Göttingen, 東京, 🚀",
        }
        probe = Probe(payload=payload)
        with EventLog(store) as writer:
            writer.save(probe)
        with EventLog(store) as reader:  # a fresh process would see the same
            got: object = reader.repository.get(probe.id)
            assert isinstance(got, Probe)
            assert got.payload == payload
            assert got.payload["at"].utcoffset() == timedelta(0)
            assert isinstance(got.payload["nested"]["list"][5]["ids"][0], UUID)
            assert got.created_on == probe.created_on
            assert got.created_on.utcoffset() == timedelta(0)

    def test_an_event_of_a_later_class_version_keeps_its_version_and_fields(
        self, log: EventLog
    ) -> None:
        """Request.Started (version 3) is stored with its class version, which eventsourcing's
        upcasting reads, and comes back with the API key and the groups it names."""
        log.save(Request.start(uuid4(), "alice", "chat", "", 10, at(0), key="a1b2", org="GWDG",
                               unit="AI", portal="chat-ai"))  # fmt: skip
        [stored] = log.recorder.select_notifications(start=None, limit=10)
        assert orjson.loads(stored.state)["class_version"] == 3
        event = log.mapper.to_domain_event(stored)
        assert isinstance(event, Request.Started) and event.key == "a1b2"
        assert (event.org, event.unit, event.portal) == ("GWDG", "AI", "chat-ai")

    def test_a_stale_save_raises_integrity_error(self, log: EventLog) -> None:
        """Two commands on the same version: the second to save loses, nothing is overwritten."""
        log.save(Job.request("chat", 20001, "token-a", 3600.0, at(0)))
        job_id = Job.request("chat", 20001, "token-a", 3600.0, at(0)).id
        winner: object = log.repository.get(job_id)
        loser: object = log.repository.get(job_id)
        assert isinstance(winner, Job) and isinstance(loser, Job) and winner is not loser
        winner.submitted("101", at(1))
        log.save(winner)
        loser.submission_failed("too late", at(1))
        with pytest.raises(IntegrityError):
            log.save(loser)
        got: object = log.repository.get(job_id)
        assert isinstance(got, Job)
        assert (got.phase, got.version) == (Phase.SUBMITTED, 2)

    def test_group_commit_records_every_producer_and_isolates_a_conflict(
        self, log: EventLog
    ) -> None:
        """Threads recording through a GroupCommitter: all recorded, batched; a stale one fails."""
        producers, rounds = 16, 10
        failures: list[BaseException] = []
        with GroupCommitter(log) as committer:

            def produce(user: str) -> None:
                try:
                    for i in range(rounds):
                        r = Request.start(uuid4(), user, "chat", "job-a", 10, at(i))
                        committer.record(r)
                        r.finish(200, "job-a", 20, 1, 2, at(i + 1))
                        committer.record(r)
                except BaseException as error:
                    failures.append(error)

            threads = [threading.Thread(target=produce, args=(f"u{n}",)) for n in range(producers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            first = Request.start(uuid4(), "x", "chat", "", 1, at(0))
            committer.record(first)
            with pytest.raises(IntegrityError):
                committer.record(Request.start(first.id, "x", "chat", "", 1, at(0)))
            stats = committer.stats
        assert failures == []
        notifications = log.recorder.select_notifications(start=None, limit=10_000)
        assert len(notifications) == producers * rounds * 2 + 1
        assert stats.batches < stats.submissions

    def test_projections_rebuilt_from_the_log_equal_the_stored_ones(
        self, store: StoreSettings, log: EventLog
    ) -> None:
        """Projections caught up after every save and checkpointed in the store equal a rebuild
        from the start of the log in a database apart."""
        db = ProjectionDb.beside(log)
        live = ProjectionRunner(log, db, projections())
        history(log, after_each_save=live.catch_up)
        live.checkpoint()

        with EventLog(store) as reopened:
            scratch = ProjectionDb.scratch()
            fresh = projections()
            runner = ProjectionRunner(reopened, scratch, fresh)
            applied = runner.catch_up()
            runner.checkpoint()
            stored = contents(ProjectionDb.beside(reopened), projections())
            assert contents(scratch, fresh) == stored
        assert applied == len(log.recorder.select_notifications(start=None, limit=10_000))
        state = fresh[0]
        assert isinstance(state, ServiceState)
        assert set(state.services) == {"chat", "embed"}
        assert state.ended[("chat", "cancelled")] == 1
        usage = daily_usage(scratch)
        assert usage[("alice", "chat", "2026-11-01")].requests == 3

    def test_a_restart_applies_only_what_came_after_the_checkpoint(
        self, store: StoreSettings, log: EventLog
    ) -> None:
        """A new runner loads the checkpoints and reads only the events recorded since."""
        history(log, after_each_save=lambda: None)
        first = ProjectionRunner(log, ProjectionDb.beside(log), projections())
        assert first.catch_up() == log.last_position()
        first.checkpoint()
        request(log, "carol", 300)
        with EventLog(store) as reopened:
            again = ProjectionRunner(reopened, ProjectionDb.beside(reopened), projections())
            assert again.catch_up() == 2
            assert again.positions() == dict.fromkeys(
                ("service state", "API keys", "accounting"), reopened.last_position())

    def test_two_writers_of_accounting_never_count_an_event_twice(
        self, store: StoreSettings, log: EventLog
    ) -> None:
        """Two processes catching up the same accounting from the same checkpoint: the second
        checkpoint is refused, reloads from the first, and the totals are counted once."""
        history(log, after_each_save=lambda: None)
        one, two = Accounting(), Accounting()
        first = ProjectionRunner(log, ProjectionDb.beside(log), [one])
        first.catch_up()
        for i in range(4):
            request(log, "dave", 400 + i)
        with EventLog(store) as other:
            second = ProjectionRunner(other, ProjectionDb.beside(other), [two])
            second.load()  # both at the same checkpoint now
            first.catch_up()
            second.catch_up()  # refused, reloaded from the first's, nothing left to apply
            request(other, "dave", 500)
            second.catch_up()
            first.catch_up()
            assert first.position == second.position == log.last_position()
        assert daily_usage(ProjectionDb.beside(log))[("dave", "chat", "2026-11-02")].requests == 5

    def test_a_catch_up_whose_checkpoint_is_refused_still_reaches_the_end(
        self, store: StoreSettings, log: EventLog
    ) -> None:
        """A runner whose last checkpoint is refused (another process checkpointed further
        meanwhile, though not to the end) reloads from that one and goes on to the end."""
        history(log, after_each_save=lambda: None)
        first = ProjectionRunner(log, ProjectionDb.beside(log), [Accounting()])
        first.catch_up(until={Accounting.NAME: 1})
        with EventLog(store) as other:
            second = ProjectionRunner(other, ProjectionDb.beside(other), [Accounting()])
            second.catch_up(until={Accounting.NAME: 2})
        first.catch_up()
        assert first.position == log.last_position()
        scratch = ProjectionDb.scratch()
        rebuilt = ProjectionRunner(log, scratch, [Accounting()])
        rebuilt.catch_up()
        assert contents(ProjectionDb.beside(log), [Accounting()]) == contents(
            scratch, [Accounting()])

    def test_a_checkpoint_that_fails_leaves_the_previous_one(
        self, store: StoreSettings, log: EventLog, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A checkpoint whose writing fails half-way commits nothing: rows and position stay as
        the previous one left them, and a restart counts every event once."""
        history(log, after_each_save=lambda: None)
        db = ProjectionDb.beside(log)
        runner = ProjectionRunner(log, db, [Accounting()])
        runner.catch_up()
        before = contents(db, [Accounting()])
        request(log, "erin", 600)
        written = Accounting.write

        def half(self: Accounting, cursor: Any, db: ProjectionDb) -> None:
            written(self, cursor, db)
            raise OSError("disk gone")

        monkeypatch.setattr(Accounting, "write", half)
        with pytest.raises(OSError):
            runner.catch_up()
        assert contents(db, [Accounting()]) == before
        monkeypatch.undo()
        restarted = ProjectionRunner(log, ProjectionDb.beside(log), [Accounting()])
        assert restarted.catch_up() == 2
        assert daily_usage(db)[("erin", "chat", "2026-11-02")].requests == 1


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> StoreSettings:
        return SqliteStore(str(tmp_path / "events.db"))


# The contract runs in a schema of its own in the test database, so that other
# suites sharing that database neither see its rows nor empty its tables.
SCHEMA = "store_contract"


def tables(store: PostgresStore) -> set[str]:
    with connect(store) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (SCHEMA,)
        ).fetchall()
    return {row[0] for row in rows}


@pytest.fixture(scope="session")
def postgres_test_db() -> PostgresStore:
    store = database_in(SCHEMA)
    with connect(store) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    EventLog(store).close()  # the library creates its tables, types and functions once
    return store


@pytest.mark.postgres
class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store(self, postgres_test_db: PostgresStore) -> StoreSettings:
        with connect(postgres_test_db) as conn:
            for table in tables(postgres_test_db):
                conn.execute(
                    sql.SQL("TRUNCATE {}.{} RESTART IDENTITY").format(
                        sql.Identifier(SCHEMA), sql.Identifier(table)
                    )
                )
        return postgres_test_db

    def test_the_library_names_its_table_after_the_application(
        self, postgres_test_db: PostgresStore, log: EventLog
    ) -> None:
        """Application name "saia" gives one table, saia_events: the one the tests empty."""
        assert {t for t in tables(postgres_test_db) if t.endswith("_events")} == {"saia_events"}

    def test_projections_live_in_the_logs_schema(
        self, postgres_test_db: PostgresStore, log: EventLog
    ) -> None:
        """Checkpoints and accounting tables are created in the store's own schema."""
        ProjectionRunner(log, ProjectionDb.beside(log), projections()).catch_up()
        daily = f"saia_accounting_v{Accounting.VERSION}_daily"
        assert {"saia_projections", daily} <= tables(postgres_test_db)
