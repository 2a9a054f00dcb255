"""sbatch/vllm.sbatch run as Slurm would run it, with a stand-in for the vllm executable."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "sbatch" / "vllm.sbatch"
# Records its arguments and the variables vLLM reads, then exits like a server told to stop.
FAKE_VLLM = """#!/usr/bin/env python3
import json, os, sys
record = {"argv": sys.argv[1:], "VLLM_API_KEY": os.environ.get("VLLM_API_KEY")}
with open(os.environ["FAKE_VLLM_RECORD"], "w") as file:
    json.dump(record, file)
"""


def run_script(tmp_path: Path, **environment: str) -> dict[str, object]:
    fake = tmp_path / "vllm"
    fake.write_text(FAKE_VLLM)
    fake.chmod(0o755)
    record = tmp_path / "record.json"
    env = {
        "PATH": os.environ["PATH"], "SAIA_VLLM_COMMAND": str(fake),
        "FAKE_VLLM_RECORD": str(record), "SAIA_VLLM_MODEL": "org/model", **environment,
    }  # fmt: skip
    subprocess.run(["bash", str(SCRIPT), "20001"], env=env, check=True, timeout=30,
                   capture_output=True)  # fmt: skip
    recorded: dict[str, object] = json.loads(record.read_text())
    return recorded


def test_the_jobs_secret_becomes_vllms_api_key_but_never_an_argument(tmp_path: Path) -> None:
    """SAIA_JOB_SECRET reaches vLLM as VLLM_API_KEY; no argument shows it to `ps`."""
    recorded = run_script(tmp_path, SAIA_JOB_SECRET="f00d" * 16)
    assert recorded["VLLM_API_KEY"] == "f00d" * 16
    assert not any("f00d" in argument for argument in recorded["argv"])  # type: ignore[attr-defined]
    assert recorded["argv"][:6] == [  # type: ignore[index]
        "serve", "org/model", "--host", "0.0.0.0", "--port", "20001"
    ]


def test_without_a_secret_vllm_gets_no_api_key(tmp_path: Path) -> None:
    """A job started outside saia (no SAIA_JOB_SECRET) runs vLLM as configured, without a key."""
    assert run_script(tmp_path)["VLLM_API_KEY"] is None


def test_vllm_serves_the_service_id_under_saia(tmp_path: Path) -> None:
    """Under saia (SAIA_SERVICE set) vLLM serves the service id, the model the proxy sends."""
    argv = run_script(tmp_path, SAIA_SERVICE="llama")["argv"]
    assert argv[argv.index("--served-model-name") + 1] == "llama"  # type: ignore[attr-defined,index]
    argv = run_script(tmp_path)["argv"]
    assert argv[argv.index("--served-model-name") + 1] == "org/model"  # type: ignore[attr-defined,index]
