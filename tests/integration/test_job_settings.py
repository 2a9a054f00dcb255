"""A service's job settings reach its job on the real Slurm, through both ways saia submits.

Through the login node: the single-file entrypoint built from this checkout, run on
Python 3.9 as sshd's forced command runs it (a bare environment, ``session`` in
SSH_ORIGINAL_COMMAND), with the hub's session client on its stdin and stdout. The
shared sshd of the dev cluster runs another build, so it is not used here.
In login-node placement: LocalSlurm with saia.toml's [jobs.<id>].

The job's script prints what it got; Slurm's own record of the job is read with
``scontrol show job``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from saia.adapters.session_client import SessionClient
from saia.adapters.slurm_local import LocalSlurm, LocalSlurmSettings, SlurmCommands
from saia.ports import SubmitRequest
from saia.protocol import job_settings
from saia.protocol.h2_wire import AsyncioByteStream
from tests.integration.test_slurm_real import cluster_reason_to_skip, command

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SERVICE = f"it-settings-{secrets.token_hex(3)}"
# Prints the variables it was given and those Slurm sets from the job's options.
REPORT = """#!/bin/bash
for name in SAIA_SERVICE SAIA_PORT IT_MODEL IT_SPACES SAIA_CONTAINER_IMAGE \\
        SLURM_JOB_PARTITION SLURM_CPUS_PER_TASK SLURM_MEM_PER_NODE; do
    printf 'report %s=%s\\n' "$name" "${!name-(unset)}"
done
printf 'report secret=%s\\n' "${SAIA_JOB_SECRET:+set}"
"""
SETTINGS = {
    "partition": "debug",
    "cpus_per_task": 3,
    "mem": "100M",
    "container": "/images/it.sif",
    "env": {"IT_MODEL": "/models/it model", "IT_SPACES": " two  spaces "},
}
EXPECTED = {
    "IT_MODEL": "/models/it model",
    "IT_SPACES": " two  spaces ",
    "SAIA_CONTAINER_IMAGE": "/images/it.sif",
    "SLURM_JOB_PARTITION": "debug",
    "SLURM_CPUS_PER_TASK": "3",
    "SLURM_MEM_PER_NODE": "100",
    "secret": "set",
}
WAIT = 30.0


@pytest.fixture(scope="module")
def cluster() -> None:
    reason = cluster_reason_to_skip()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def sbatch_dir(cluster: None, tmp_path: Path) -> Path:
    folder = tmp_path / "sbatch"
    folder.mkdir()
    (folder / "report.sbatch").write_text(REPORT)
    return folder


@pytest.fixture
def submitted() -> Iterator[list[str]]:
    """Job ids to cancel at the end of the test, however it ends."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run([command("scancel"), *ids], capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def old_python() -> str:
    path = os.environ.get("SAIA_PYTHON39") or subprocess.run(
        [str(REPO / "scripts" / "old-python")], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not path or not os.access(path, os.X_OK):
        pytest.fail("no Python 3.9: run scripts/old-python (scripts/test exports SAIA_PYTHON39)")
    return path


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory, old_python: str) -> Path:
    output = tmp_path_factory.mktemp("pyz") / "saia-entrypoint.pyz"
    build = [sys.executable, str(REPO / "scripts" / "build-entrypoint"), "--output", str(output),
             "--python", old_python]  # fmt: skip
    built = subprocess.run(build, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    return output


def entrypoint_config(folder: Path, sbatch_dir: Path) -> Path:
    """The login node's file: a global partition no job could run in, which the service's
    own replaces, and an operator's --cpus-per-task=1 that the service's overrides."""
    state = folder / "state"
    state.mkdir(mode=0o700)
    service = {"sbatch": "report.sbatch", "time_limit": 2, **SETTINGS}
    lines = [
        f"sbatch_dir = {json.dumps(str(sbatch_dir))}",
        f"state_dir = {json.dumps(str(state))}",
        f"job_output_dir = {json.dumps(os.environ['SAIA_JOB_OUTPUT_DIR'])}",
        f"job_python = {json.dumps(sys.executable)}",
        'partition = "no-such-partition"',
        'sbatch_args = ["--cpus-per-task=1"]',
        "[commands]",
        *(f"{name} = {json.dumps(command(name))}" for name in ("sbatch", "squeue", "scancel")),
        f"slurm_conf = {json.dumps(os.environ['SLURM_CONF'])}",
        f"[services.{SERVICE}]",
        *(f"{key} = {toml(value)}" for key, value in service.items()),
    ]
    path = folder / "entrypoint.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


async def submit_through_session(python: str, pyz: Path, config: Path, order: bytes) -> bytes:
    """One submit on a session with the entrypoint, started as sshd's forced command."""
    process = await asyncio.create_subprocess_exec(
        python, "-I", str(pyz), "--config", str(config),
        env={"PATH": "/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": "session"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    client = SessionClient(AsyncioByteStream(process.stdout, process.stdin))
    try:
        await client.start()
        response = await client.request("POST", "/slurm/submit", body=order)
        body = await response.read()
        assert response.status == 200, body
        return body
    finally:
        await client.aclose()
        assert await process.wait() == 0


def finished_output(job_id: str) -> str:
    """The job's output once it has ended."""
    deadline = time.monotonic() + WAIT
    while True:
        shown = scontrol_job(job_id)
        if re.search(r"JobState=(COMPLETED|FAILED|CANCELLED|TIMEOUT)", shown):
            break
        assert time.monotonic() < deadline, f"job {job_id} did not end: {shown}"
        time.sleep(0.3)
    path = Path(os.environ["SAIA_JOB_OUTPUT_DIR"]) / f"saia-{job_id}.out"
    deadline = time.monotonic() + 10  # the output file may lag the state by a moment
    while "report secret=" not in (text := path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"no report in {path}: {text!r}"
        time.sleep(0.2)
    return text


def scontrol_job(job_id: str) -> str:
    shown = subprocess.run([command("scontrol"), "show", "job", job_id], capture_output=True,
                           text=True, timeout=30, check=True)  # fmt: skip
    return shown.stdout


def reported(output: str) -> dict[str, str]:
    return dict(line[len("report ") :].split("=", 1) for line in output.splitlines()
                if line.startswith("report "))  # fmt: skip


def assert_settings_reached(job_id: str, port: int) -> None:
    shown = scontrol_job(job_id)
    got = reported(finished_output(job_id))
    assert got == {**EXPECTED, "SAIA_SERVICE": SERVICE, "SAIA_PORT": str(port)}, got
    assert "Partition=debug" in shown, shown
    assert re.search(r"\bNumCPUs=3\b", shown) and "MinMemoryNode=100M" in shown, shown


def test_a_job_submitted_through_the_entrypoint_gets_its_services_settings(
    pyz: Path, old_python: str, sbatch_dir: Path, tmp_path: Path, submitted: list[str]
) -> None:
    """entrypoint.toml's [services.<id>] options and variables reach the job on Slurm: its
    own partition over the file's, its cpus over the operator's, its env and container."""
    config = entrypoint_config(tmp_path, sbatch_dir)
    port = 20000 + secrets.randbelow(9000)
    order = json.dumps({"service": SERVICE, "port": port, "token": secrets.token_hex(8)})
    answer = asyncio.run(submit_through_session(old_python, pyz, config, order.encode()))
    job_id = answer.decode().strip()
    submitted.append(job_id)
    assert_settings_reached(job_id, port)


def test_a_job_submitted_in_login_node_placement_gets_its_services_settings(
    sbatch_dir: Path, submitted: list[str]
) -> None:
    """saia.toml's [jobs.<id>] reach the job just the same when saia runs sbatch itself."""
    slurm = LocalSlurm(LocalSlurmSettings(
        sbatch_dir=sbatch_dir,
        job_python=sys.executable,
        job_output_dir=Path(os.environ["SAIA_JOB_OUTPUT_DIR"]),
        sbatch_args=("--cpus-per-task=1",),
        user=getpass.getuser(),
        commands=SlurmCommands(command("sbatch"), command("squeue"), command("scancel")),
        job_secret=lambda token: "secret",
        jobs={SERVICE: job_settings.parse(SETTINGS)},
    ))  # fmt: skip
    port = 20000 + secrets.randbelow(9000)
    job_id = slurm.submit(SubmitRequest(SERVICE, "report.sbatch", port, secrets.token_hex(8),
                                        120.0))  # fmt: skip
    submitted.append(job_id)
    assert_settings_reached(job_id, port)

