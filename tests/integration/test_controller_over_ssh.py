"""The controller on the hub: Slurm through saia-entrypoint over the SSH link, on the real cluster.

The controller runs in a thread as ``saia controller`` runs it, built here
from its parts (not from a config file) on RemoteSlurm over a ControlSession
on an SshLink, as ``saia serve`` wires them, and jobs are probed through it
too (they answer only requests that carry their secret). The entrypoint's
configuration is the
entrypoint tests' one plus this test's own service, so that this test's
controller owns its jobs alone.

These tests kill the dev sshd: run them alone, not while someone else uses it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from saia import catalog
from saia.adapters.control_session import Answer, ControlSession
from saia.adapters.lock import FileLock
from saia.adapters.prober_remote import RemoteProber
from saia.adapters.slurm_remote import EntrypointCalls, RemoteSlurm
from saia.adapters.ssh_link import AnswerLost, SshLink
from saia.adapters.store import SqliteStore
from saia.config import ControllerSettings
from saia.controller import Controller, PassReport, run
from saia.domain.spec import ServiceSpec
from saia.domain.state import JobView
from saia.hub import Hub
from tests.integration.cluster import (
    alive,
    cancel_service_jobs,
    recorded_events,
    routable,
    unique,
    wait_for,
)
from tests.integration.test_entrypoint_ssh import (  # the entrypoint's config and the key
    Link,
    link,  # noqa: F401 (a fixture, used by name)
    write_config,
)
from tests.integration.test_ssh_link import Changes, settings_for, sshd_stopped

pytestmark = [pytest.mark.ssh, pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TIME_LIMIT_MINUTES = 10  # the login node's, and the hub's job_expiry_time to match it
PORT_MIN, PORT_MAX = 20000, 20099  # the entrypoint tests pick their ports above these
SETTINGS = ControllerSettings(interval=1, startup_interval=0.25, probe_interval=1)


@dataclass
class HubSide:
    name: str  # the service both sides know
    link: SshLink
    changes: Changes


@pytest.fixture
def hub_side(link: Link) -> Iterator[HubSide]:  # noqa: F811 (the imported fixture)
    """A fresh service on the login node, and a link to it that is up."""
    name = unique("hub")
    # write_config knows one service; a dotted TOML key adds this test's beside it.
    rule = f'{{ sbatch = "testservice.sbatch", time_limit = {TIME_LIMIT_MINUTES} }}'
    write_config(link, **{f"services.{name}": rule})
    changes = Changes()
    ssh = SshLink(settings_for(link), changes)
    ssh.start()
    try:
        changes.wait_for(True)
        yield HubSide(name, ssh, changes)
    finally:
        ssh.close()
        cancel_service_jobs(name)
        write_config(link)


class HubController:
    """A log, the service in it, and the controller loop in a thread, on the given Slurm."""

    def __init__(self, folder: Path, spec: ServiceSpec, through: EntrypointCalls) -> None:
        self.hub = Hub(SqliteStore(str(folder / "saia.db")))
        catalog.sync(self.hub, [spec], time.time())
        self.hub.refresh()
        slurm = RemoteSlurm(through, timeout=60)
        rng = random.SystemRandom()
        prober = RemoteProber(through)
        self.controller = Controller(self.hub, slurm, prober, SETTINGS, time.time, rng)
        self.reports: list[PassReport] = []
        self.through = through
        self._lock = FileLock(folder / "saia.lock")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=run, args=(self.controller, self._lock, self._stop, self.reports.append),
            daemon=True,
        )  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.controller.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "controller thread did not stop"

    def running(self) -> bool:
        return self._thread.is_alive()

    def ready(self, service: str) -> list[JobView]:
        return routable(self.hub, service)

    def events(self, topic: str) -> list[Any]:
        return recorded_events(self.hub, topic)


@contextmanager
def on_the_hub(
    folder: Path, side: HubSide, lossy: bool = False
) -> Iterator[HubController]:
    """The hub's controller for the test's service, asking Slurm over its session."""
    spec = ServiceSpec.from_dict({
        "id": side.name, "sbatch": "testservice.sbatch", "minimum_number_instances": 1,
        "job_expiry_time": TIME_LIMIT_MINUTES, "lead_time": 30,
        "port_min": PORT_MIN, "port_max": PORT_MAX,
    })  # fmt: skip
    control = ControlSession(lambda: side.link.open_channel("session"))
    through: EntrypointCalls = LosesFirstSubmitAnswer(control) if lossy else control
    saia = HubController(folder, spec, through)
    try:
        yield saia
    finally:
        saia.stop()
        control.close()
        saia.hub.close()


def job_events(saia: HubController, name: str) -> dict[str, list[Any]]:
    """Every Job event of the log by kind; the service's own only."""
    ours = {event.originator_id for event in saia.events("saia.Job.Requested")
            if event.service == name}  # fmt: skip
    kinds = ("Requested", "Submitted", "SubmissionFailed", "Started", "BecameReady",
             "Heartbeat", "Draining", "CancelRequested", "Ended")  # fmt: skip
    return {
        kind: [event for event in saia.events(f"saia.Job.{kind}") if event.originator_id in ours]
        for kind in kinds
    }


def assert_one_healthy_job(saia: HubController, name: str, slurm_job_id: str) -> None:
    """One job requested, submitted, started and ready; nothing failed, ended or drained."""
    events = job_events(saia, name)
    counts = {kind: len(found) for kind, found in events.items() if kind != "Heartbeat"}
    assert counts == {
        "Requested": 1, "Submitted": 1, "SubmissionFailed": 0, "Started": 1, "BecameReady": 1,
        "Draining": 0, "CancelRequested": 0, "Ended": 0,
    }  # fmt: skip
    assert [event.slurm_job_id for event in events["Submitted"]] == [slurm_job_id]
    assert all(event.ok for event in events["Heartbeat"])
    assert alive(name) == [slurm_job_id], "exactly one live job in the queue"


def test_a_cut_link_keeps_the_service_up_and_submits_nothing_twice(
    tmp_path: Path, hub_side: HubSide
) -> None:
    """sshd killed for 10 s: the controller runs on, the ready job stays, one job in the end."""
    name = hub_side.name
    with on_the_hub(tmp_path, hub_side) as saia:
        saia.start()
        (first,) = wait_for(lambda: saia.ready(name), 60, "a ready job, submitted over the link")
        with sshd_stopped(hub_side.link.settings.port):
            hub_side.changes.wait_for(False)
            cut = time.monotonic()
            while time.monotonic() - cut < 10:
                assert saia.running()
                assert [job.id for job in saia.ready(name)] == [first.id]
                time.sleep(0.5)
            assert not saia.reports[-1].slurm_available
        hub_side.changes.wait_for(True)
        passes = len(saia.reports)
        wait_for(lambda: [r for r in saia.reports[passes:] if r.slurm_available], 30,
                 "a pass that sees Slurm again")  # fmt: skip
        time.sleep(3)  # a few more passes, each of which could have gone wrong
        assert saia.running()
        assert [job.id for job in saia.ready(name)] == [first.id]
        assert_one_healthy_job(saia, name, first.slurm_job_id)
        outages = saia.events("saia.Cluster.SlurmUnavailable")
        assert outages and all("SSH link" in event.error for event in outages)
        assert saia.events("saia.Cluster.SlurmAvailable")
    assert [up for up, _ in hub_side.changes.seen] == [True, False, True]


def test_a_link_down_at_start_delays_the_first_job_without_doubling_it(
    tmp_path: Path, hub_side: HubSide
) -> None:
    """A controller that starts with the link down submits nothing, then exactly one job."""
    name = hub_side.name
    with on_the_hub(tmp_path, hub_side) as saia:
        with sshd_stopped(hub_side.link.settings.port):
            hub_side.changes.wait_for(False)
            saia.start()
            time.sleep(3)
            assert saia.running() and saia.reports
            assert not any(report.slurm_available for report in saia.reports)
            assert job_events(saia, name)["Requested"] == []
        (first,) = wait_for(lambda: saia.ready(name), 60, "a ready job once the link is back")
        time.sleep(2)
        assert_one_healthy_job(saia, name, first.slurm_job_id)


class LosesFirstSubmitAnswer:
    """The real session, except that the first submit's answer is lost after the job was queued."""

    def __init__(self, real: ControlSession) -> None:
        self.real = real
        self.lost: list[str] = []

    def call(self, method: str, path: str, body: bytes = b"", *, timeout: float) -> Answer:
        answer = self.real.call(method, path, body, timeout=timeout)
        if path == "/slurm/submit" and not self.lost:
            self.lost.append(answer.body.decode().strip())
            raise AnswerLost("submit: channel broke: the test dropped the answer")
        return answer


def test_a_submit_whose_answer_was_lost_is_adopted_not_repeated(
    tmp_path: Path, hub_side: HubSide
) -> None:
    """sbatch ran but the hub never heard: reconciliation finds the job by token; one job."""
    name = hub_side.name
    with on_the_hub(tmp_path, hub_side, lossy=True) as saia:
        saia.start()
        (first,) = wait_for(lambda: saia.ready(name), 60, "the queued job to be adopted")
        time.sleep(2)
        assert isinstance(saia.through, LosesFirstSubmitAnswer)
        assert saia.through.lost == [first.slurm_job_id]
        assert_one_healthy_job(saia, name, first.slurm_job_id)
