"""Checkpointed projections through random histories: events appended, applied in batches of
any size, checkpoints that fail half-way, crashes, restarts and a second process writing the
same projections. Whatever happens, catching up to the end gives what one pass from the start
of the log gives, and no event is counted twice.
"""

from __future__ import annotations

import contextlib
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from saia.adapters.projection_db import Cursor, ProjectionDb
from saia.adapters.store import EventLog, SqliteStore
from saia.domain.job import FinalState, Job
from saia.domain.request import Request
from saia.domain.service import Service
from saia.domain.spec import ServiceSpec
from saia.projections.accounting import Accounting
from saia.projections.runner import Projection, ProjectionRunner
from saia.proxy.keys import issue_key
from saia.replay.rebuild import contents, projections

T0 = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
SERVICES = ("chat", "embed")
USERS = ("alice", "bob", "carol")


class Crash(Exception):
    """The process died in the middle of a checkpoint."""


class Process:
    """One process's runner over the store's projections."""

    def __init__(self, store: SqliteStore) -> None:
        self.log = EventLog(store)
        self.projections = projections()
        self.runner = ProjectionRunner(self.log, ProjectionDb.beside(self.log), self.projections)

    def close(self) -> None:
        self.log.close()


class CheckpointMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.store = SqliteStore(str(Path(self._dir.name) / "saia.db"))
        self.writer = EventLog(self.store)
        self.seconds = 0.0
        self.open: list[Request] = []
        self.jobs: list[Job] = []
        self.keys: list[Any] = []
        self.writer.save(*(Service.register(ServiceSpec.from_dict(
            {"id": name, "sbatch": "s.sbatch"}), self._now()) for name in SERVICES))  # fmt: skip
        self.main = Process(self.store)
        self.other = Process(self.store)

    def _now(self) -> datetime:
        return T0 + timedelta(seconds=self.seconds)

    # -- the log grows -------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), service=st.sampled_from(SERVICES),
          hours=st.floats(0, 30), finished=st.booleans())  # fmt: skip
    def a_request_arrives(self, user: str, service: str, hours: float, finished: bool) -> None:
        self.seconds += hours * 3600
        request = Request.start(uuid4(), user, service, "", 100, self._now())
        if finished:
            request.finish(200, "job", 300, 7, 11, self._now() + timedelta(seconds=1.5))
        else:
            self.open.append(request)
        self.writer.save(request)

    @rule(data=st.data(), status=st.sampled_from([200, 500, 429]))
    def an_open_request_ends(self, data: st.DataObject, status: int) -> None:
        if not self.open:
            return
        request = self.open.pop(data.draw(st.integers(0, len(self.open) - 1)))
        if status == 429:
            request.reject(status, "rate limit", self._now())
        else:
            request.finish(status, "job", 50, 3, 4, self._now())
        self.writer.save(request)

    @rule(service=st.sampled_from(SERVICES))
    def a_job_runs(self, service: str) -> None:
        job = Job.request(service, 20000 + len(self.jobs), uuid4().hex[:16], 3600.0,
                          self._now(), reason="demand")  # fmt: skip
        job.submitted(str(1000 + len(self.jobs)), self._now())
        job.started("node1", self._now() + timedelta(seconds=5))
        self.jobs.append(job)
        self.writer.save(job)

    @rule(data=st.data())
    def a_job_ends(self, data: st.DataObject) -> None:
        if not self.jobs:
            return
        job = self.jobs.pop(data.draw(st.integers(0, len(self.jobs) - 1)))
        job.end(FinalState.CANCELLED, self._now() + timedelta(seconds=60))
        self.writer.save(job)

    @rule(user=st.sampled_from(USERS), revoke=st.booleans())
    def a_key_is_issued(self, user: str, revoke: bool) -> None:
        issued = issue_key(user, "", self._now())
        if revoke:
            issued.aggregate.revoke("lost", self._now())
        self.writer.save(issued.aggregate)

    # -- processes apply it ----------------------------------------------------------------

    @rule(events=st.integers(1, 30), other=st.booleans())
    def a_batch_is_applied(self, events: int, other: bool) -> None:
        process = self.other if other else self.main
        process.runner.load()
        until = min(process.runner.position + events, self.writer.last_position())
        process.runner.catch_up(until={p.NAME: until for p in process.projections})

    @rule(other=st.booleans())
    def a_checkpoint(self, other: bool) -> None:
        (self.other if other else self.main).runner.checkpoint()

    @rule()
    def a_checkpoint_dies_half_way(self) -> None:
        """The accounting rows are written, then the process dies before the commit."""
        process = self.main
        accounting = next(p for p in process.projections if isinstance(p, Accounting))

        def written_then_crash(cursor: Cursor, db: ProjectionDb) -> None:
            Accounting.write(accounting, cursor, db)
            raise Crash

        accounting.write = written_then_crash  # type: ignore[method-assign]
        with contextlib.suppress(Crash):  # no Crash: nothing was pending, nothing written
            process.runner.checkpoint()
        self.main_crashes()

    @rule()
    def main_crashes(self) -> None:
        """Gone without a checkpoint; a new process starts from what is stored."""
        self.main.close()
        self.main = Process(self.store)

    @rule()
    def main_catches_up_and_matches_a_rebuild(self) -> None:
        self.main.runner.catch_up()
        self.main.runner.checkpoint()
        self._equal_to_a_rebuild(self.main.projections)

    def _equal_to_a_rebuild(self, caught_up: list[Projection]) -> None:
        scratch = ProjectionDb.scratch()
        fresh = projections()
        runner = ProjectionRunner(self.writer, scratch, fresh)
        runner.catch_up()
        runner.checkpoint()
        try:
            assert [p.snapshot() for p in caught_up] == [p.snapshot() for p in fresh]
            assert contents(ProjectionDb.beside(self.main.log), projections()) == contents(
                scratch, fresh)
        finally:
            scratch.close()

    def teardown(self) -> None:
        try:
            self.main_catches_up_and_matches_a_rebuild()
        finally:
            self.main.close()
            self.other.close()
            self.writer.close()
            self._dir.cleanup()


TestCheckpoints = CheckpointMachine.TestCase
TestCheckpoints.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

