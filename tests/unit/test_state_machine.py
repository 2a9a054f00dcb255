"""The controller, driven through random histories against a fake Slurm and a fake clock.

Invariants are checked after every step. The machine runs on the in-memory store
for many examples and on SQLite for a few, so both paths are exercised.
"""

from __future__ import annotations

import copy
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from saia import catalog
from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import MemoryStore, SqliteStore, StoreSettings
from saia.config import ControllerSettings
from saia.controller import Controller, PassReport
from saia.domain.job import DrainReason
from saia.domain.policy import Drain, backoff_until, plan, slots
from saia.domain.spec import ServiceSpec
from saia.hub import Hub
from saia.projections.accounting import Accounting
from saia.projections.runner import ProjectionRunner
from saia.replay.rebuild import contents, projections
from tests.fakes import FakeClock, FakeProber, FakeSlurm

INTERVAL = 5.0
SPECS = [
    ServiceSpec.from_dict({
        "id": "chat", "sbatch": "chat.sbatch", "inferences_per_instance": 2,
        "minimum_number_instances": 1, "maximum_number_instances": 3, "job_expiry_time": 10,
        "lead_time": 60, "idle_time": 120, "cooldown": 30, "ready_timeout": 40,
        "port_min": 20000, "port_max": 20011, "demand_window": 15,
    }),
    ServiceSpec.from_dict({
        "id": "embed", "sbatch": "embed.sbatch", "minimum_number_instances": 0,
        "maximum_number_instances": 2, "job_expiry_time": 5, "lead_time": 30,
        "idle_time": 60, "cooldown": 20, "port_min": 20005, "port_max": 20015,
        "demand_window": 10,
    }),
]


class ControllerMachine(RuleBasedStateMachine):
    store: StoreSettings = MemoryStore()

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.slurm = FakeSlurm(self.clock, ready_after=2.0)
        self.settings = self._store()
        self.hub = Hub(self.settings)
        for spec in SPECS:
            catalog.add(self.hub, spec, self.clock())
        self.controller = self._controller()
        self.last_demand_at: dict[str, float] = {}
        self.demand_now: dict[str, int] = {}
        self.report: PassReport = self._tick()

    def _store(self) -> StoreSettings:
        return self.store

    def _controller(self, rng: random.Random | None = None) -> Controller:
        return Controller(
            self.hub, self.slurm, FakeProber(self.slurm), ControllerSettings(interval=INTERVAL),
            self.clock, rng or random.Random(7),
        )

    def _tick(self) -> PassReport:
        rng_before = copy.deepcopy(self.controller.rng)
        self.report = self.controller.tick()
        self.rng_before = rng_before
        return self.report

    # -- rules ---------------------------------------------------------------------------

    @rule(service=st.sampled_from([s.id for s in SPECS]), inflight=st.integers(0, 8),
          waiting=st.integers(0, 3))
    def set_demand(self, service: str, inflight: int, waiting: int) -> None:
        if inflight + waiting > 0 or self.demand_now.get(service, 0) > 0:
            self.last_demand_at[service] = self.clock()  # demand held until now
        self.demand_now[service] = inflight + waiting
        self.controller.demand.set(service, inflight, waiting, self.clock())

    @rule(seconds=st.floats(0.5, INTERVAL), start=st.booleans())
    def time_passes(self, seconds: float, start: bool) -> None:
        self.clock.advance(seconds)
        if start:
            self.slurm.start_pending()
        self.slurm.expire()
        self._tick()

    @rule(steps=st.integers(1, 40))
    def a_while_passes(self, steps: int) -> None:
        for _ in range(steps):
            self.clock.advance(INTERVAL)
            self.slurm.start_pending()
            self.slurm.expire()
            self._tick()

    @precondition(lambda self: bool(self.slurm.running()))
    @rule(data=st.data())
    def job_fails(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(self.slurm.running()))
        self.slurm.fail(job.job_id)

    @precondition(lambda self: bool(self.slurm.running()))
    @rule(data=st.data())
    def service_process_dies(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self.slurm.running())).healthy = False

    @rule()
    def finished_jobs_leave_the_queue(self) -> None:
        self.slurm.forget_finished()

    @rule(available=st.booleans(), accepting=st.booleans())
    def slurm_changes(self, available: bool, accepting: bool) -> None:
        self.slurm.available = available
        self.slurm.accepting = accepting

    @rule()
    def tick(self) -> None:
        self._tick()

    @precondition(lambda self: not isinstance(self.settings, MemoryStore))
    @rule(checkpointed=st.booleans())
    def hub_restarts(self, checkpointed: bool) -> None:
        """A stop (projections checkpointed) or a crash (not): the next hub loads the stored
        projections, applies what came after, and goes on as if nothing happened."""
        if checkpointed:
            self.hub.checkpoint()
        self.hub.close()
        self.hub = Hub(self.settings)
        self.controller = self._controller(self.controller.rng)  # tokens go on being new
        for service, demand in self.demand_now.items():
            self.controller.demand.set(service, demand, 0, self.clock())
        self._tick()

    # -- invariants ----------------------------------------------------------------------

    def _submissions_possible(self, name: str) -> bool:
        view = self.hub.state.services[name]
        until = backoff_until(view)
        return (
            self.report.slurm_available and self.slurm.accepting
            and (until is None or self.clock() >= until)
        )

    @invariant()
    def ports_are_unique_among_live_jobs(self) -> None:
        ports = [j.port for v in self.hub.state.services.values() for j in v.jobs.values()]
        assert len(ports) == len(set(ports))

    @invariant()
    def slots_stay_within_maximum(self) -> None:
        for view in self.hub.state.services.values():
            assert len(slots(view)) <= view.spec.maximum_number_instances
            assert len(view.jobs) <= 2 * view.spec.maximum_number_instances

    @invariant()
    def minimum_is_requested_when_slurm_accepts(self) -> None:
        for name, view in self.hub.state.services.items():
            if self._submissions_possible(name):
                assert len(slots(view)) >= view.spec.minimum_number_instances

    @invariant()
    def draining_jobs_are_never_routed(self) -> None:
        for view in self.hub.state.services.values():
            assert all(not job.draining for job in view.routing_targets())

    @invariant()
    def replacement_requested_a_lead_time_before_expiry(self) -> None:
        now = self.clock()
        for name, view in self.hub.state.services.items():
            if not self._submissions_possible(name):
                continue
            successors = {job.replaces for job in view.jobs.values()}
            for job in view.jobs.values():
                expiry = job.expiry
                if job.draining or expiry is None:
                    continue
                if expiry - now < view.lead_time():
                    assert job.id in successors, f"{job.token} expires without a replacement"

    @invariant()
    def scale_to_zero_only_after_idle_time(self) -> None:
        now = self.clock()
        for action in self.report.actions:
            if not isinstance(action, Drain) or action.reason is not DrainReason.SURPLUS:
                continue
            name = self.hub.state.job_service[action.job]
            view = self.hub.state.services[name]
            if not slots(view):
                active = max(view.last_active_at, self.last_demand_at.get(name, 0.0))
                assert now - active >= view.spec.idle_time

    @invariant()
    def projections_equal_a_rebuild_from_the_log(self) -> None:
        scratch = ProjectionDb.scratch()
        state, keys, accounting = fresh = projections()
        runner = ProjectionRunner(self.hub.log, scratch, fresh)
        runner.catch_up()
        runner.checkpoint()
        assert state.snapshot() == self.hub.state.snapshot()
        assert keys.snapshot() == self.hub.keys.snapshot()
        self.hub.account()
        assert contents(scratch, [accounting]) == contents(self.hub.db, [Accounting()])
        scratch.close()

    @invariant()
    def plan_is_idempotent(self) -> None:
        observation = self.report.observation
        assert observation is not None
        again = plan(
            self.hub.state.active_services(), observation, self.report.at, random.Random(1)
        )
        assert again == [], again

    def teardown(self) -> None:
        self.hub.close()


TestControllerInMemory = ControllerMachine.TestCase
TestControllerInMemory.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class SqliteControllerMachine(ControllerMachine):
    def _store(self) -> StoreSettings:
        self._dir = tempfile.TemporaryDirectory()
        return SqliteStore(str(Path(self._dir.name) / "saia.db"))

    def teardown(self) -> None:
        super().teardown()
        self._dir.cleanup()


TestControllerOnSqlite = SqliteControllerMachine.TestCase
TestControllerOnSqlite.settings = settings(
    max_examples=12, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("ERROR")
