"""LocalSlurm and HttpProber against the real dev cluster (scripts/dev-cluster up)."""

from __future__ import annotations

import getpass
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from uuid import uuid4

import pytest

from saia.adapters.prober import HttpProber
from saia.adapters.slurm_local import LocalSlurm, LocalSlurmSettings, SlurmCommands
from saia.domain.job import FinalState
from saia.domain.slurm import SlurmJob, SlurmState
from saia.ports import ProbeTarget, SlurmUnavailable, SubmissionRejected, SubmitRequest
from tests.net import free_port

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
WAIT = 20.0  # seconds; a job starts in under 2 s here and ends within KillWait (5 s)


def cluster_reason_to_skip() -> str:
    """Why the real cluster cannot be used, or '' when it can."""
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set: run scripts/dev-cluster up and source .dev/cluster/env"
    if not os.environ.get("SAIA_JOB_OUTPUT_DIR"):
        return "SAIA_JOB_OUTPUT_DIR is not set: source .dev/cluster/env"
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return "sinfo is not installed"
    try:
        answer = subprocess.run(
            [sinfo, "-h"], capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if answer.returncode != 0:
        return f"sinfo failed: {answer.stderr.strip()}"
    return ""


def command(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} not on PATH"
    return path


@pytest.fixture(scope="module")
def cluster() -> None:
    reason = cluster_reason_to_skip()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def submitted() -> Iterator[list[str]]:
    """Job ids to cancel at the end of the test, however it ends."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run([command("scancel"), *ids], capture_output=True, timeout=30, check=False)


@pytest.fixture
def settings(cluster: None, tmp_path: Path) -> LocalSlurmSettings:
    sbatch_dir = tmp_path / "sbatch"
    sbatch_dir.mkdir()
    shutil.copy(REPO / "sbatch" / "testservice.sbatch", sbatch_dir)
    (sbatch_dir / "no-shebang.sbatch").write_text("sleep 600\n")  # sbatch refuses it
    partition = os.environ.get("SAIA_SLURM_PARTITION")
    return LocalSlurmSettings(
        sbatch_dir=sbatch_dir,
        job_python=str(REPO / ".venv" / "bin" / "python"),
        job_output_dir=Path(os.environ["SAIA_JOB_OUTPUT_DIR"]),
        sbatch_args=(f"--partition={partition}",) if partition else (),
        user=getpass.getuser(),  # as in production, where saia's jobs are its own user's
        commands=SlurmCommands(command("sbatch"), command("squeue"), command("scancel")),
        timeout=20.0,
    )


def wait_for(slurm: LocalSlurm, job_id: str, done: Callable[[SlurmJob], bool]) -> SlurmJob:
    deadline = time.monotonic() + WAIT
    seen: SlurmJob | None = None
    while time.monotonic() < deadline:
        seen = next((job for job in slurm.jobs() if job.job_id == job_id), None)
        if seen is not None and done(seen):
            return seen
        if seen is not None and seen.final is not None:
            # Seen while other tests ran: a saia controller listing every user's jobs
            # cancels saia-* jobs it does not know, these included, within 0.2 s.
            raise AssertionError(
                f"job {job_id} ended early ({seen}): is another saia controller "
                "running on this cluster with user=None and unknown_jobs=cancel?"
            )
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not there within {WAIT} s; last seen: {seen}")


def job_output(job_id: str) -> str:
    path = Path(os.environ["SAIA_JOB_OUTPUT_DIR"]) / f"saia-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else f"(no {path})"


def test_submit_probe_cancel(settings: LocalSlurmSettings, submitted: list[str]) -> None:
    """A real testservice job is listed as saia's, answers probes, and ends CANCELLED."""
    slurm = LocalSlurm(settings)
    token = secrets.token_hex(8)
    port = free_port()
    service = f"itest-{token[:6]}"
    before = time.time()
    job_id = slurm.submit(SubmitRequest(service, "testservice.sbatch", port, token, 300.0))
    submitted.append(job_id)
    assert re.fullmatch(r"[1-9][0-9]*", job_id)

    running = wait_for(slurm, job_id, lambda job: job.state is SlurmState.RUNNING)
    assert (running.service, running.token, running.port) == (service, token, port)
    assert re.fullmatch(r"node[1-4]", running.batch_host), running
    assert running.time_limit == 300.0
    assert running.start_time is not None and before - 2 <= running.start_time <= time.time() + 2

    prober = HttpProber()
    healthy = ProbeTarget(uuid4(), running.batch_host, port, "/health")
    deadline = time.monotonic() + WAIT
    result = prober.probe([healthy], timeout=1.0)[healthy.job]
    while not result.ok and time.monotonic() < deadline:
        time.sleep(0.2)
        result = prober.probe([healthy], timeout=1.0)[healthy.job]
    assert result.ok, f"{result.error}; job output:\n{job_output(job_id)}"
    assert 0 < result.latency < 1.0

    missing = ProbeTarget(uuid4(), running.batch_host, port, "/no-such-path")
    closed = ProbeTarget(uuid4(), running.batch_host, free_port(), "/health")
    results = prober.probe([healthy, missing, closed], timeout=1.0)
    assert results[healthy.job].ok
    assert (results[missing.job].ok, results[missing.job].error) == (False, "HTTP 404")
    assert not results[closed.job].ok and "ConnectError" in results[closed.job].error

    slurm.cancel(job_id)
    ended = wait_for(slurm, job_id, lambda job: job.state is SlurmState.CANCELLED)
    assert ended.final is FinalState.CANCELLED
    slurm.cancel(job_id)  # idempotent: the job is already gone


def test_script_sbatch_refuses_is_rejected(settings: LocalSlurmSettings) -> None:
    """A script sbatch will not take (no #! line) is SubmissionRejected with sbatch's reason."""
    slurm = LocalSlurm(settings)
    request = SubmitRequest("itest-bad", "no-shebang.sbatch", free_port(), secrets.token_hex(8), 60)
    with pytest.raises(SubmissionRejected, match="sbatch exited 1"):
        slurm.submit(request)


def test_jobs_ignore_strangers_and_report_impostors(
    settings: LocalSlurmSettings, submitted: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Another job is not listed; a saia-* job without saia's comment is not either, but warned."""
    tag = secrets.token_hex(4)
    output = f"--output={settings.job_output_dir}/itest-%j.out"
    ids = {}
    for name in (f"itest-stranger-{tag}", f"saia-itest-impostor-{tag}"):
        answer = subprocess.run(
            [command("sbatch"), "--parsable", "--hold", f"--job-name={name}", output,
             "--time=1", "--wrap", "sleep 60"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert answer.returncode == 0, answer.stderr
        ids[name] = answer.stdout.strip()
        submitted.append(ids[name])
    with caplog.at_level(logging.WARNING, logger="saia.adapters.slurm_local"):
        listed = {job.job_id for job in LocalSlurm(settings).jobs()}
    assert not listed & set(ids.values())
    assert f"job {ids[f'saia-itest-impostor-{tag}']} is named like saia's" in caplog.text


def test_unreachable_controller(settings: LocalSlurmSettings, tmp_path: Path) -> None:
    """A controller nobody listens for is SlurmUnavailable (here: our timeout beats Slurm's 9 s)."""
    conf = Path(os.environ["SLURM_CONF"]).read_text()
    wrong = re.sub(r"(?m)^SlurmctldPort=.*$", f"SlurmctldPort={free_port()}", conf)
    (tmp_path / "slurm.conf").write_text(wrong)
    environment = {**os.environ, "SLURM_CONF": str(tmp_path / "slurm.conf")}
    slurm = LocalSlurm(replace(settings, environment=environment, timeout=2.0))
    with pytest.raises(SlurmUnavailable):
        slurm.jobs()
