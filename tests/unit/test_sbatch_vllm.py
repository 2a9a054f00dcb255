"""vLLM's command line (saia.jobs.vllm_command) pinned by golden files, and sbatch/vllm.sbatch
run as Slurm would run it, with stand-ins for the vllm and apptainer executables.

SAIA_UPDATE_GOLDEN=1 rewrites the golden files (and skips their tests, saying so);
without it a difference fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from saia.jobs.vllm_command import CommandError, main, tensor_parallel_size, vllm_argv

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "sbatch" / "vllm.sbatch"
GOLDEN = REPO / "tests" / "data" / "golden" / "vllm_command"
UPDATE = os.environ.get("SAIA_UPDATE_GOLDEN") == "1"
PORT = 20001
SECRET = "f00d" * 16
VLLM = {"vllm": "/opt/vllm/bin/vllm"}
RUNTIMES = {"apptainer": "/usr/bin/apptainer", "singularity": "/usr/bin/singularity"}

# The three configurations a centre runs, as the job's environment has them.
CASES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "one-gpu": ({
        "SAIA_SERVICE": "llama-3.1-8b-instruct",
        "SAIA_VLLM_MODEL": "/models/Meta-Llama-3.1-8B-Instruct",
        "SLURM_GPUS_ON_NODE": "1",
        "CUDA_VISIBLE_DEVICES": "0",
        "HF_HOME": "/models/hf",
        "SAIA_JOB_SECRET": SECRET,
    }, VLLM),
    "four-gpus": ({
        "SAIA_SERVICE": "llama-3.1-70b-instruct",
        "SAIA_VLLM_MODEL": "/models/Meta-Llama-3.1-70B-Instruct",
        "SAIA_VLLM_ALIASES": "meta-llama/Meta-Llama-3.1-70B-Instruct llama-70b",
        "SAIA_VLLM_EXTRA_ARGS": "--max-model-len 32768 --gpu-memory-utilization 0.92",
        "SLURM_GPUS_ON_NODE": "4",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3",
        "HF_HOME": "/models/hf",
        "SAIA_JOB_SECRET": SECRET,
    }, VLLM),
    "container": ({
        "SAIA_SERVICE": "qwen2.5-7b-instruct",
        "SAIA_VLLM_MODEL": "/models/Qwen2.5-7B-Instruct",
        "SAIA_CONTAINER_IMAGE": "/images/vllm-0.6.3.sif",
        "SLURM_GPUS_ON_NODE": "2",
        "HF_HOME": "/scratch/hf",
        "SAIA_JOB_SECRET": SECRET,
    }, RUNTIMES),
}  # fmt: skip


# -- the command line --------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_command_line_is_its_golden_file(case: str) -> None:
    """Each configuration renders exactly the recorded arguments, one a line."""
    env, found = CASES[case]
    rendered = "".join(f"{argument}\n" for argument in vllm_argv(env, PORT, found))
    path = GOLDEN / f"{case}.argv"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
        pytest.skip(f"SAIA_UPDATE_GOLDEN=1 rewrote {path}: review the difference")
    assert path.exists(), f"{path} is missing: SAIA_UPDATE_GOLDEN=1 writes it"
    assert rendered == path.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_jobs_secret_is_never_an_argument(case: str) -> None:
    """SAIA_JOB_SECRET is in each case's environment and in none of its arguments."""
    env, found = CASES[case]
    assert not any(SECRET in argument for argument in vllm_argv(env, PORT, found))


def test_the_service_id_is_the_first_served_name_then_the_aliases() -> None:
    """--served-model-name is the service id, then each alias once (the id not again)."""
    env = {**CASES["one-gpu"][0], "SAIA_VLLM_ALIASES": "a llama-3.1-8b-instruct b a"}
    argv = vllm_argv(env, PORT, VLLM)
    at = argv.index("--served-model-name")
    assert argv[at + 1 : at + 4] == ["llama-3.1-8b-instruct", "a", "b"]
    assert argv[at + 4].startswith("--")


@pytest.mark.parametrize(
    ("env", "size"),
    [
        ({}, 1),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
        ({"CUDA_VISIBLE_DEVICES": ""}, 1),
        ({"SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 2),
        ({"SLURM_GPUS_ON_NODE": "0", "CUDA_VISIBLE_DEVICES": "0,1"}, 2),
        ({"SAIA_VLLM_TENSOR_PARALLEL_SIZE": "8", "SLURM_GPUS_ON_NODE": "2"}, 8),
    ],
)
def test_tensor_parallelism_follows_the_gpus(env: dict[str, str], size: int) -> None:
    """The explicit size wins; else Slurm's GPUs on the node; else those visible; else 1."""
    assert tensor_parallel_size(env) == size


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"SAIA_SERVICE": ""}, "SAIA_SERVICE is not set"),
        ({"SAIA_VLLM_MODEL": ""}, "SAIA_VLLM_MODEL is not set"),
        ({"SAIA_VLLM_MODEL": "models/llama/8b"}, "neither an absolute path nor org/name"),
        ({"SAIA_VLLM_TENSOR_PARALLEL_SIZE": "0"}, "SAIA_VLLM_TENSOR_PARALLEL_SIZE='0'"),
        ({"SAIA_VLLM_TENSOR_PARALLEL_SIZE": "two"}, "is not a whole number"),
        ({"SLURM_GPUS_ON_NODE": "gpu:2"}, "SLURM_GPUS_ON_NODE='gpu:2'"),
        ({"SAIA_VLLM_EXTRA_ARGS": "--port 1"}, "may not set --port"),
        ({"SAIA_VLLM_EXTRA_ARGS": "--api-key=x"}, "may not set --api-key=x"),
        ({"SAIA_VLLM_EXTRA_ARGS": "-tp 2"}, "may not set -tp"),
        ({"SAIA_VLLM_COMMAND": "vllm-absent"}, "no 'vllm-absent' on PATH"),
        ({"SAIA_VLLM_MODEL": "/models/a\nb"}, "line break"),
    ],
)
def test_what_cannot_be_started_is_refused(change: dict[str, str], problem: str) -> None:
    """A missing or malformed setting is a CommandError saying which, never a guess."""
    with pytest.raises(CommandError, match=problem.replace("(", r"\(")):
        vllm_argv({**CASES["one-gpu"][0], **change}, PORT, VLLM)


def test_singularity_runs_the_image_when_apptainer_is_absent() -> None:
    """The runtime is apptainer when found, else singularity; neither is an error."""
    env = CASES["container"][0]
    assert vllm_argv(env, PORT, RUNTIMES)[0] == "/usr/bin/apptainer"
    only = {"singularity": "/opt/bin/singularity"}
    assert vllm_argv(env, PORT, only)[:3] == ["/opt/bin/singularity", "exec", "--nv"]
    with pytest.raises(CommandError, match="neither apptainer nor singularity"):
        vllm_argv(env, PORT, VLLM)


def test_a_model_inside_hf_home_is_not_bound_twice() -> None:
    """HF_HOME is bound; the model's folder too unless it lies inside HF_HOME."""
    env = {**CASES["container"][0], "SAIA_VLLM_MODEL": "/scratch/hf/hub/qwen"}
    argv = vllm_argv(env, PORT, RUNTIMES)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"] == ["/scratch/hf:/scratch/hf"]
    with pytest.raises(CommandError, match="cannot be bound"):
        vllm_argv({**env, "HF_HOME": "/scratch/a:b"}, PORT, RUNTIMES)


def test_main_prints_one_argument_a_line_or_its_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The module's entry point prints the rendered arguments; a problem is exit 2."""
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path, "vllm")))
    for name, value in {**CASES["four-gpus"][0], "SAIA_VLLM_COMMAND": "vllm"}.items():
        monkeypatch.setenv(name, value)
    assert main([str(PORT)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [str(tmp_path / "bin" / "vllm"), "serve",
                           "/models/Meta-Llama-3.1-70B-Instruct"]  # fmt: skip
    assert main(["port"]) == 2 and main(["70000"]) == 2
    monkeypatch.delenv("SAIA_VLLM_MODEL")
    assert main([str(PORT)]) == 2
    assert "SAIA_VLLM_MODEL is not set" in capsys.readouterr().err


# -- the script, end to end ------------------------------------------------------------

# Records what it was started with and whether the secret shows in any process's
# command line; with FAKE_VLLM_SERVE it then waits, like a server, until SIGTERM.
FAKE = """#!{python}
import json, os, signal, sys, time
secret = os.environ.get("VLLM_API_KEY")
shown = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{{pid}}/cmdline", "rb") as file:
            if secret and secret.encode() in file.read():
                shown.append(pid)
    except OSError:
        pass
record = {{
    "program": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "VLLM_API_KEY": secret,
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"), "HF_HOME": os.environ.get("HF_HOME"),
    "secret_in_command_lines": shown, "terminated": False,
}}
def save():
    with open(os.environ["FAKE_VLLM_RECORD"] + ".tmp", "w") as file:
        json.dump(record, file)
    os.replace(os.environ["FAKE_VLLM_RECORD"] + ".tmp", os.environ["FAKE_VLLM_RECORD"])
def stop(signum, frame):
    record["terminated"] = True
    save()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
save()
while os.environ.get("FAKE_VLLM_SERVE"):
    time.sleep(0.05)
"""


def fake_bin(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text(FAKE.format(python=sys.executable))
        path.chmod(0o755)
    return folder


def script_environment(tmp_path: Path, case: str, *programs: str, **extra: str) -> dict[str, str]:
    env, _ = CASES[case]
    return {
        **env,
        "PATH": f"{fake_bin(tmp_path, *programs)}:/usr/bin:/bin",
        "SAIA_PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),  # this checkout's saia, as a job's venv has its own
        "FAKE_VLLM_RECORD": str(tmp_path / "record.json"),
        **extra,
    }


def run_script(tmp_path: Path, case: str, *programs: str, **extra: str) -> dict[str, Any]:
    env = script_environment(tmp_path, case, *programs, **extra)
    done = subprocess.run(["bash", str(SCRIPT), str(PORT)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    recorded: dict[str, Any] = json.loads((tmp_path / "record.json").read_text())
    return recorded


def test_the_script_runs_exactly_the_rendered_command(tmp_path: Path) -> None:
    """vllm.sbatch runs the vllm it finds on PATH with the golden arguments of its case."""
    recorded = run_script(tmp_path, "four-gpus", "vllm")
    env, _ = CASES["four-gpus"]
    expected = vllm_argv(env, PORT, {"vllm": str(tmp_path / "bin" / "vllm")})
    assert [recorded["program"], *recorded["argv"]] == ["vllm", *expected[1:]]


def test_the_jobs_secret_becomes_vllms_api_key_but_never_an_argument(tmp_path: Path) -> None:
    """SAIA_JOB_SECRET reaches vLLM as VLLM_API_KEY; no process's command line shows it."""
    recorded = run_script(tmp_path, "one-gpu", "vllm")
    assert recorded["VLLM_API_KEY"] == SECRET
    assert recorded["secret_in_command_lines"] == []


def test_without_a_secret_vllm_gets_no_api_key(tmp_path: Path) -> None:
    """A job started outside saia (no SAIA_JOB_SECRET) runs vLLM without a key."""
    assert run_script(tmp_path, "one-gpu", "vllm", SAIA_JOB_SECRET="")["VLLM_API_KEY"] is None


def test_hugging_face_is_offline_unless_told_otherwise(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 by default; a service's env may set it otherwise; HF_HOME passes."""
    recorded = run_script(tmp_path, "one-gpu", "vllm")
    assert (recorded["HF_HUB_OFFLINE"], recorded["HF_HOME"]) == ("1", "/models/hf")
    assert run_script(tmp_path, "one-gpu", "vllm", HF_HUB_OFFLINE="0")["HF_HUB_OFFLINE"] == "0"


def test_a_container_runs_through_apptainer_or_else_singularity(tmp_path: Path) -> None:
    """With SAIA_CONTAINER_IMAGE the script runs the runtime, which gets the environment."""
    recorded = run_script(tmp_path, "container", "singularity")
    assert recorded["program"] == "singularity"
    assert recorded["argv"] == vllm_argv(CASES["container"][0], PORT, RUNTIMES)[1:]
    assert recorded["VLLM_API_KEY"] == SECRET and recorded["secret_in_command_lines"] == []
    assert run_script(tmp_path, "container", "apptainer")["program"] == "apptainer"


def test_a_setting_that_cannot_be_rendered_fails_the_job_with_its_reason(tmp_path: Path) -> None:
    """No model: the job exits 2 saying so, and vLLM never starts."""
    env = script_environment(tmp_path, "one-gpu", "vllm", SAIA_VLLM_MODEL="")
    done = subprocess.run(["bash", str(SCRIPT), str(PORT)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    assert "SAIA_VLLM_MODEL is not set" in done.stderr
    assert not (tmp_path / "record.json").exists()


def test_sigterm_stops_vllm_and_the_job_cleanly(tmp_path: Path) -> None:
    """Slurm's SIGTERM to the batch shell reaches vLLM, and the job ends with vLLM's exit."""
    env = script_environment(tmp_path, "one-gpu", "vllm", FAKE_VLLM_SERVE="1")
    job = subprocess.Popen(["bash", str(SCRIPT), str(PORT)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    record = tmp_path / "record.json"
    try:
        deadline = time.monotonic() + 30
        while not record.exists():
            assert time.monotonic() < deadline and job.poll() is None, "vLLM did not start"
            time.sleep(0.05)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=30) == 0
    finally:
        job.kill()
        job.communicate()
    assert json.loads(record.read_text())["terminated"] is True
