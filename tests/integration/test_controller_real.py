"""The controller on the real Slurm dev cluster: scaling, failures, walltime, crashes, outages."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from saia.domain.cluster import Cluster
from saia.domain.job import Job
from tests.integration.cluster import (
    REPO,
    alive,
    cancel_service_jobs,
    copy_sbatch_dir,
    deployment,
    queued,
    unique,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def service(name: str, **fields: Any) -> dict[str, Any]:
    return {"id": unique(name), "sbatch": "testservice.sbatch", "job_expiry_time": 10,
            "lead_time": 30, "port_min": 30000, "port_max": 39999, **fields}


def test_scales_from_zero_to_n_under_demand_and_back_after_the_idle_time(tmp_path: Path) -> None:
    """Demand for 3 starts 3 jobs from zero; without demand they drain, to zero after idle_time."""
    spec = service("scale", maximum_number_instances=3, idle_time=12, cooldown=4,
                   demand_window=2)
    name = spec["id"]
    with deployment(tmp_path, [spec]) as saia:
        saia.start()
        assert saia.ready(name) == [] and alive(name) == []
        saia.controller.demand.set(name, 3, 0, time.time())
        saia.controller.wake()
        wait_for(lambda: len(saia.ready(name)) == 3, 60, "three ready jobs")
        dropped = time.time()
        saia.controller.demand.set(name, 0, 0, dropped)
        wait_for(lambda: len(saia.view(name).jobs) == 0 and not alive(name), 90, "zero jobs")
        drains = [e for e in saia.events("saia.Job.Draining") if e.reason == "surplus"]
        last_drain = max(e.timestamp.timestamp() for e in drains)
        assert last_drain - dropped >= 12, "scaled to zero before the idle time"
        assert len(drains) == 3


def test_a_job_cancelled_behind_saias_back_is_replaced(tmp_path: Path) -> None:
    """scancel by someone else: the job ends as cancelled and a new one becomes ready."""
    spec = service("cancelled", minimum_number_instances=1)
    name = spec["id"]
    with deployment(tmp_path, [spec]) as saia:
        saia.start()
        (first,) = wait_for(lambda: saia.ready(name), 60, "a ready job")
        subprocess.run(["scancel", first.slurm_job_id], check=True)
        second = wait_for(
            lambda: [j for j in saia.ready(name) if j.id != first.id], 60, "a replacement"
        )[0]
        ended = [e for e in saia.events("saia.Job.Ended") if e.originator_id == first.id]
        assert [e.final_state for e in ended] == ["cancelled"]
        assert second.slurm_job_id != first.slurm_job_id


def test_a_job_whose_service_dies_is_replaced(tmp_path: Path) -> None:
    """The service process exits inside its job: detected, ended, replaced."""
    spec = service("dies", minimum_number_instances=1)
    name = spec["id"]
    with deployment(tmp_path, [spec]) as saia:
        saia.start()
        (first,) = wait_for(lambda: saia.ready(name), 60, "a ready job")
        httpx.post(f"http://{first.node}:{first.port}/admin/exit", json={"code": 3}, timeout=5)
        wait_for(lambda: [j for j in saia.ready(name) if j.id != first.id], 60, "a replacement")
        assert first.id not in saia.view(name).jobs


def test_walltime_rollover_keeps_a_ready_backend_at_every_instant(tmp_path: Path) -> None:
    """2-minute jobs served for 5 minutes: each is replaced in time, never a gap in service."""
    spec = service("rollover", minimum_number_instances=1, job_expiry_time=2, lead_time=40)
    name = spec["id"]
    gaps: list[str] = []
    served: list[str] = []
    stop = threading.Event()
    with deployment(tmp_path, [spec]) as saia:
        saia.start()
        wait_for(lambda: saia.ready(name), 60, "a ready job")
        started = time.monotonic()

        def check() -> None:
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    targets = saia.ready(name)
                    if not targets:
                        gaps.append(f"no ready backend at +{time.monotonic() - started:.1f} s")
                    else:
                        job = targets[0]
                        saia.controller.demand.started(name, job.id, time.time())
                        try:
                            client.get(f"http://{job.node}:{job.port}/health").raise_for_status()
                            served.append(job.slurm_job_id)
                        except httpx.HTTPError as error:
                            gaps.append(f"{job.slurm_job_id} failed: {error}")
                        finally:
                            saia.controller.demand.finished(name, job.id, time.time())
                    stop.wait(0.25)

        checker = threading.Thread(target=check, daemon=True)
        checker.start()
        try:
            time.sleep(5 * 60)
        finally:
            stop.set()
            checker.join(timeout=30)
        assert gaps == []
        backends = list(dict.fromkeys(served))
        assert len(backends) >= 3, f"only {backends} served in 5 minutes"
        timeouts = [e for e in saia.events("saia.Job.Ended") if e.final_state == "timeout"]
        assert timeouts == [], "a job reached its walltime instead of being replaced first"


def crash_during_submission(tmp_path: Path, wrapper: str, spec: dict[str, Any]) -> Path:
    """Run `saia tick` with an sbatch that stalls, and kill -9 it (and its children) mid-way."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\n{wrapper}\n")
    (bin_dir / "sbatch").chmod(0o755)
    for command in ("squeue", "scancel"):
        (bin_dir / command).symlink_to(f"/usr/bin/{command}")
    config = write_config(tmp_path, [spec], slurm_bin=str(bin_dir))
    env = {**os.environ, "SAIA_CONFIG": str(config)}
    saia = str(REPO / ".venv/bin/saia")
    subprocess.run([saia, "init"], env=env, check=True, capture_output=True)
    tick = subprocess.Popen([saia, "tick"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        marker = tmp_path / "sbatch-started"
        wait_for(marker.exists, 30, "the stalled sbatch to start")
        time.sleep(1.0)
    finally:
        os.killpg(tick.pid, signal.SIGKILL)
        tick.wait()
    return write_config(tmp_path, [spec])  # the same store, with the real sbatch


def test_killed_after_sbatch_ran_adopts_the_job_instead_of_submitting_again(
    tmp_path: Path,
) -> None:
    """kill -9 while sbatch's answer is pending: on restart the queued job is adopted, once."""
    spec = service("crash-after", minimum_number_instances=1)
    name = spec["id"]
    wrapper = f'/usr/bin/sbatch "$@"; touch {tmp_path}/sbatch-started; sleep 60'
    try:
        config = crash_during_submission(tmp_path, wrapper, spec)
        wait_for(lambda: alive(name), 30, "the job in the queue")
        with deployment(config.parent, [spec]) as saia:
            saia.start()
            wait_for(lambda: saia.ready(name), 60, "the adopted job ready")
            time.sleep(3)
            assert len(alive(name)) == 1
            assert len(saia.events("saia.Job.Requested")) == 1
    finally:
        cancel_service_jobs(name)


def test_killed_before_sbatch_ran_submits_exactly_once_after_the_grace(tmp_path: Path) -> None:
    """kill -9 before sbatch ran: after submit_grace the request is given up, one job starts."""
    spec = service("crash-before", minimum_number_instances=1, submit_grace=5)
    name = spec["id"]
    wrapper = f'touch {tmp_path}/sbatch-started; sleep 60; exec /usr/bin/sbatch "$@"'
    try:
        config = crash_during_submission(tmp_path, wrapper, spec)
        assert alive(name) == []
        with deployment(config.parent, [spec]) as saia:
            saia.start()
            wait_for(lambda: saia.ready(name), 60, "a ready job")
            time.sleep(3)
            assert len(alive(name)) == 1
            failed = saia.events("saia.Job.SubmissionFailed")
            assert [e.error for e in failed] == ["not in the queue after sbatch"]
    finally:
        cancel_service_jobs(name)


@pytest.mark.parametrize("policy", ["cancel", "adopt"])
def test_an_unknown_saia_job_in_the_queue_is_handled_per_setting(
    tmp_path: Path, policy: str
) -> None:
    """A job named like saia's that the log never saw is cancelled, or adopted as a slot."""
    spec = service("stranger", minimum_number_instances=1)
    name = spec["id"]
    env = {**os.environ, "SAIA_PYTHON": str(REPO / ".venv/bin/python")}
    stranger = subprocess.run(
        ["sbatch", "--parsable", f"--job-name=saia-{name}", "--comment=saia:00000000000000aa:31999",
         "--time=5", f"--output={os.environ['SAIA_JOB_OUTPUT_DIR']}/stranger-%j.out",
         str(REPO / "sbatch/testservice.sbatch"), "31999"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    with deployment(tmp_path, [spec], unknown_jobs=policy) as saia:
        saia.start()
        (ready,) = wait_for(lambda: saia.ready(name), 60, "a ready job")
        time.sleep(2)
        states = dict(queued(name))
        if policy == "cancel":
            assert states[stranger] in ("CANCELLED", "COMPLETING")
            assert ready.slurm_job_id != stranger
        else:
            assert ready.slurm_job_id == stranger and alive(name) == [stranger]


def test_slurmctld_outage_is_recorded_and_survived(tmp_path: Path) -> None:
    """slurmctld down for 30 s: passes keep running, the outage is recorded, service resumes."""
    spec = service("outage", minimum_number_instances=1)
    name = spec["id"]
    pid_file = Path(os.environ["SAIA_DEV_DIR"]) / "run/slurmctld.pid"
    with deployment(tmp_path, [spec]) as saia:
        saia.start()
        (job,) = wait_for(lambda: saia.ready(name), 60, "a ready job")
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        try:
            wait_for(lambda: saia.events("saia.Cluster.SlurmUnavailable"), 40, "the outage")
            time.sleep(30)
        finally:
            subprocess.run([str(REPO / "scripts/dev-cluster"), "up"], check=True,
                           capture_output=True)
        wait_for(lambda: saia.events("saia.Cluster.SlurmAvailable"), 60, "the recovery")
        passes = len(saia.reports)
        wait_for(lambda: len(saia.reports) > passes + 2, 30, "more passes")
        assert [j.id for j in saia.ready(name)] == [job.id]
        assert all(isinstance(e, Cluster.SlurmUnavailable)
                   for e in saia.events("saia.Cluster.SlurmUnavailable"))


def test_a_failing_sbatch_is_recorded_and_backs_off(tmp_path: Path) -> None:
    """sbatch refusing a script is a recorded failure with growing backoff, not a crash loop."""
    sbatch_dir = copy_sbatch_dir(tmp_path)
    (sbatch_dir / "broken.sbatch").write_text(
        "#!/bin/bash\n#SBATCH --partition=no-such-partition\nexec sleep 60\n"
    )
    spec = service("broken", sbatch="broken.sbatch", minimum_number_instances=1,
                   backoff_base=1, backoff_max=8)
    with deployment(tmp_path, [spec], sbatch_dir=str(sbatch_dir)) as saia:
        saia.start()
        time.sleep(20)
        failures = saia.events("saia.Job.SubmissionFailed")
        assert 3 <= len(failures) <= 6, f"{len(failures)} attempts in 20 s"
        assert all("no-such-partition" in e.error or "partition" in e.error.lower()
                   for e in failures)
        gaps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(failures)]
        assert gaps == sorted(gaps), "backoff does not grow"
        assert all(isinstance(e, Job.SubmissionFailed) for e in failures)
        assert saia.running(), "the controller stopped"
