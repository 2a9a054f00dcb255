"""The login node's sbatch command line and environment, run against a stand-in for sbatch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from saia.entrypoint.config import EntrypointConfig, parse
from saia.entrypoint.slurm import LoginSlurm

TOKEN = "0123456789abcdef"
# Records its arguments and environment, and answers as sbatch --parsable does.
FAKE_SBATCH = """
import json, os, sys
with open({record!r}, "w") as file:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, file)
print("4242")
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "sbatch").mkdir()
    (tmp_path / "sbatch" / "vllm.sbatch").write_text("#!/bin/bash\n")
    sbatch = tmp_path / "sbatch-command"
    sbatch.write_text(f"#!{sys.executable}\n" + FAKE_SBATCH.format(record=str(tmp_path / "r")))
    sbatch.chmod(0o755)
    return tmp_path


def config(folder: Path, **service: Any) -> EntrypointConfig:
    data = {
        "sbatch_dir": str(folder / "sbatch"),
        "state_dir": str(folder / "state"),
        "job_python": "/opt/saia/.venv/bin/python",
        "account": "everyone",
        "sbatch_args": ["--cpus-per-task=1", "--nodes=1"],
        "commands": {"sbatch": str(folder / "sbatch-command")},
        "services": {"llm": {"sbatch": "vllm.sbatch", "time_limit": 30, **service}},
    }
    return parse(str(folder / "entrypoint.toml"), data)


def submitted(folder: Path, **service: Any) -> dict[str, Any]:
    """What sbatch was run with for one submit of ``llm`` on port 20001."""
    settings = config(folder, **service)
    slurm = LoginSlurm(settings, {"PATH": "/usr/bin:/bin", "HOME": str(folder)}, "saia")
    assert slurm.submit(settings.services["llm"], 20001, TOKEN) == "4242"
    record: dict[str, Any] = json.loads((folder / "r").read_text())
    return record


def test_a_service_without_settings_is_submitted_as_before(folder: Path) -> None:
    """saia's options, the operator's, the file's account, then the script and its port."""
    argv = submitted(folder)["argv"]
    assert argv == [
        "--parsable", "--job-name=saia-llm", f"--comment=saia:{TOKEN}:20001", "--time=30",
        "--export=ALL",
        "--cpus-per-task=1", "--nodes=1", "--account=everyone",
        str(folder / "sbatch" / "vllm.sbatch"), "20001",
    ]  # fmt: skip


def test_a_services_options_follow_the_operators_so_that_they_win(folder: Path) -> None:
    """The service's options come last (Slurm takes the last of a repeated option)."""
    argv = submitted(folder, partition="gpu", account="llm", gres="gpu:2", cpus_per_task=16,
                     mem="64G", constraint="a100", gpus="2")["argv"]  # fmt: skip
    assert argv[5:] == [
        "--cpus-per-task=1", "--nodes=1",
        "--partition=gpu", "--account=llm", "--gres=gpu:2", "--gpus=2", "--constraint=a100",
        "--mem=64G", "--cpus-per-task=16",
        str(folder / "sbatch" / "vllm.sbatch"), "20001",
    ]  # fmt: skip


def test_the_job_gets_the_services_variables_and_saias_own(folder: Path) -> None:
    """sbatch's environment (which it exports to the job) holds the service's variables, the
    container and saia's own; nothing of it is on the command line."""
    record = submitted(folder, container="/images/vllm.sif",
                       env={"SAIA_VLLM_MODEL": "/models/llama", "HF_HOME": "/models/hf"})
    env = record["env"]
    assert env["SAIA_VLLM_MODEL"] == "/models/llama" and env["HF_HOME"] == "/models/hf"
    assert env["SAIA_CONTAINER_IMAGE"] == "/images/vllm.sif"
    assert (env["SAIA_SERVICE"], env["SAIA_PORT"]) == ("llm", "20001")
    assert env["SAIA_PYTHON"] == "/opt/saia/.venv/bin/python"
    assert len(env["SAIA_JOB_SECRET"]) == 64
    assert env["PATH"] == "/usr/bin:/bin"
    assert not any("/models" in argument or "vllm.sif" in argument for argument in record["argv"])
