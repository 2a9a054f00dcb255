"""Legacy requests as demand in login-node placement: noted by the entrypoint, counted by
the controller, so that a service at zero instances starts on its first request."""

from __future__ import annotations

import io
import random
import threading
import time
from pathlib import Path

from saia import catalog
from saia.adapters.store import MemoryStore
from saia.config import ControllerSettings
from saia.controller import Controller
from saia.domain.spec import ServiceSpec
from saia.entrypoint.config import EntrypointConfig, LoginNodePlacement, ServiceRule
from saia.entrypoint.context import Context
from saia.entrypoint.legacy_relay import answer
from saia.hub import Hub
from saia.protocol import demand, exits
from tests.fakes import FakeClock, FakeLoginSlurm, FakeProber, FakeSlurm

SPEC = ServiceSpec.from_dict({
    "id": "chat", "sbatch": "chat.sbatch", "minimum_number_instances": 0,
    "maximum_number_instances": 2, "demand_window": 30,
})  # fmt: skip
REQUEST = "inference-1\nalice\nchat\n/v1/models\n -X GET"


def test_notes_are_counted_within_the_window_and_damaged_lines_are_none(tmp_path: Path) -> None:
    """recent() gives the times at or after ``since``; junk lines are skipped, not fatal."""
    for at in (100.0, 200.0, 300.0):
        demand.record(str(tmp_path), "chat", at)
    with open(tmp_path / "demand" / "chat", "ab") as file:
        file.write(b"garbage\n\n")
    (tmp_path / "demand" / "not a service id").write_text("400.0\n")
    assert demand.recent(str(tmp_path), 200.0) == {"chat": [200.0, 300.0]}
    assert demand.recent(str(tmp_path / "nothing"), 0.0) == {}


def test_concurrent_notes_are_all_kept_and_long_files_are_cut_to_the_recent(
    tmp_path: Path,
) -> None:
    """Appends from many processes never mix; a file past KEEP_BYTES keeps recent lines only."""
    def note(second: int) -> None:
        for n in range(500):
            demand.record(str(tmp_path), "chat", second + n / 1000)

    threads = [threading.Thread(target=note, args=(second,)) for second in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(demand.recent(str(tmp_path), 0.0)["chat"]) == 4000
    assert len(demand.recent(str(tmp_path), 7.0)["chat"]) == 500
    assert (tmp_path / "demand" / "chat").stat().st_size < demand.KEEP_BYTES


def controller_with_notes(folder: Path, clock: FakeClock, slurm: FakeSlurm) -> Controller:
    hub = Hub(MemoryStore())
    catalog.add(hub, SPEC, clock())
    return Controller(
        hub, slurm, FakeProber(slurm), ControllerSettings(), clock, random.Random(1),
        outside_demand=lambda since: demand.recent(str(folder), since),
    )  # fmt: skip


def test_a_service_at_zero_starts_on_its_first_legacy_request(tmp_path: Path) -> None:
    """No job without demand; one noted request within the window submits one job."""
    clock, slurm = FakeClock(), FakeSlurm(FakeClock())
    controller = controller_with_notes(tmp_path, clock, slurm)
    controller.tick()
    assert slurm.submitted == 0
    demand.record(str(tmp_path), "chat", clock() - 60)  # outside the 30 s window
    controller.tick()
    assert slurm.submitted == 0
    demand.record(str(tmp_path), "chat", clock() - 1)
    controller.tick()
    assert slurm.submitted == 1


def login_node_context(tmp_path: Path, log: Path, slurm: FakeSlurm) -> Context:
    command = ("/bin/sh", "-c", f"echo pass >> {log}")
    config = EntrypointConfig(
        path=str(tmp_path / "entrypoint.toml"),
        sbatch_dir=str(tmp_path),
        state_dir=str(tmp_path / "state"),
        services={"chat": ServiceRule("chat", "chat.sbatch")},
        login_node=LoginNodePlacement(command, min_interval=30.0),
    )
    return Context(
        config=config, read=lambda: b"", write=io.BytesIO().write, clock=lambda: 1000.0,
        environment={"PATH": "/usr/bin:/bin"},
        make_slurm=lambda: FakeLoginSlurm(slurm),  # type: ignore[arg-type, return-value]
    )  # fmt: skip


def test_the_entrypoint_notes_legacy_requests_and_starts_a_pass_when_no_job_runs(
    tmp_path: Path,
) -> None:
    """Each request is noted; one that finds no job answers 503 and starts one pass."""
    log = tmp_path / "passes"
    context = login_node_context(tmp_path, log, FakeSlurm(FakeClock()))
    assert [answer(REQUEST, context) for _ in range(3)] == [exits.UNAVAILABLE] * 3
    assert demand.recent(str(tmp_path / "state"), 0.0) == {"chat": [1000.0] * 3}
    deadline = time.monotonic() + 5
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a second pass, if one were started, would have written by now
    assert log.read_text() == "pass\n"  # rate-limited: one pass for the three
