"""LocalSlurm against a fake Slurm at the command level: argv, environment, exit codes, timeouts."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from saia.adapters.slurm_local import (
    InvalidSubmission,
    LocalSlurm,
    LocalSlurmSettings,
    SlurmCommands,
    SubmissionUnconfirmed,
)
from saia.domain.slurm import SlurmState
from saia.ports import (
    Slurm,
    SlurmError,
    SlurmTimeout,
    SlurmUnavailable,
    SubmissionRejected,
    SubmitRequest,
)
from saia.protocol import job_settings
from saia.protocol.slurm import SQUEUE_FORMAT, walltime_minutes

# One script for all three commands, dispatching on the name it was run by, like
# submitit's fake. Jobs and a log of every call live in a JSON file; a test can
# make a command misbehave by putting an answer under "behaviour".
FAKE_SLURM = r'''
import json, os, sys, time

command = os.path.basename(sys.argv[0])
args = sys.argv[1:]
path = os.environ["FAKE_SLURM_STATE"]
with open(path) as f:
    state = json.load(f)
state["calls"].append({"command": command, "args": args, "env": dict(os.environ)})


def save():
    with open(path, "w") as f:
        json.dump(state, f)


def finish(code=0, out="", err=""):
    save()
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(code)


def option(name, default=None):
    for arg in args:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


behaviour = state["behaviour"].get(command)
if behaviour is not None:
    save()
    time.sleep(behaviour.get("sleep", 0))
    finish(behaviour.get("exit", 0), behaviour.get("stdout", ""), behaviour.get("stderr", ""))

if command == "sbatch":
    positional = [arg for arg in args if not arg.startswith("--")]
    script, *script_args = positional
    if not os.path.isfile(script):
        finish(1, err=f"sbatch: error: Unable to open file {script}\n")
    job_id = str(state["next_id"])
    state["next_id"] += 1
    state["jobs"].append({
        "id": job_id, "name": option("--job-name", "wrap"),
        "comment": option("--comment", "(null)"), "state": "RUNNING", "host": "node1",
        "limit": int(option("--time")), "user": os.environ.get("FAKE_SLURM_USER", "saia"),
        "args": script_args,
    })
    finish(out=job_id + "\n")

if command == "squeue":
    if option("--format") != "%i|%j|%k|%T|%r|%B|%M|%l|%S":
        finish(1, err="squeue: error: unexpected format\n")
    user = option("--user")
    every_state = option("--states") == "all"
    rows = []
    for job in state["jobs"]:
        if user is not None and job["user"] != user:
            continue
        if not every_state and job["state"] not in ("PENDING", "RUNNING", "COMPLETING"):
            continue
        limit = job["limit"]
        rows.append(
            f"{job['id']}|{job['name']}|{job['comment']}|{job['state']}|None|{job['host']}|"
            f"0:05|{limit // 60}:{limit % 60:02d}:00|2026-11-29T03:42:20\n"
        )
    finish(out="".join(rows))

if command == "scancel":
    user = option("--user")
    (job_id,) = [arg for arg in args if not arg.startswith("--")]
    job = next((job for job in state["jobs"] if job["id"] == job_id), None)
    if job is None:
        if user is None:
            finish()  # real scancel: unknown id, exit 0, nothing printed
        finish(1, err=f"scancel: error: Kill job error on job id {job_id}: "
                      "Invalid job id specified\n")
    if user is not None and job["user"] != user:
        finish()  # filtered out: real scancel does nothing and exits 0
    if job["user"] != os.environ.get("FAKE_SLURM_USER", "saia"):
        finish(210, err=f"scancel: error: Kill job error on job id {job_id}: "
                        "Access/permission denied\n")
    job["state"] = "CANCELLED"
    finish()

finish(2, err=f"fake slurm: unknown command {command}\n")
'''

UNREACHABLE = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"


class FakeCluster:
    def __init__(self, root: Path) -> None:
        self.state_file = root / "state.json"
        self.bin = root / "bin"
        self.bin.mkdir()
        script = self.bin / "fake-slurm"
        script.write_text(f"#!{sys.executable}\n{FAKE_SLURM}")
        script.chmod(0o755)
        for command in ("sbatch", "squeue", "scancel"):
            (self.bin / command).symlink_to(script)
        self.write({"next_id": 100, "jobs": [], "calls": [], "behaviour": {}})

    def read(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.state_file.read_text())
        return data

    def write(self, state: dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps(state))

    def behave(self, command: str, **answer: object) -> None:
        state = self.read()
        state["behaviour"][command] = answer
        self.write(state)

    def add_job(self, **job: object) -> None:
        state = self.read()
        state["jobs"].append({"state": "RUNNING", "host": "node2", "limit": 60, "user": "saia",
                              "comment": "(null)", **job})
        self.write(state)

    def calls(self, command: str) -> list[dict[str, Any]]:
        return [call for call in self.read()["calls"] if call["command"] == command]

    def commands(self) -> SlurmCommands:
        return SlurmCommands(*(str(self.bin / name) for name in ("sbatch", "squeue", "scancel")))


@pytest.fixture
def cluster(tmp_path: Path) -> FakeCluster:
    return FakeCluster(tmp_path)


@pytest.fixture
def sbatch_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "sbatch"
    folder.mkdir()
    (folder / "testservice.sbatch").write_text("#!/bin/bash\nexec sleep 600\n")
    return folder


@pytest.fixture
def settings(cluster: FakeCluster, sbatch_dir: Path) -> LocalSlurmSettings:
    return LocalSlurmSettings(
        sbatch_dir=sbatch_dir,
        job_python="/opt/saia/venv/bin/python",
        commands=cluster.commands(),
        timeout=10.0,
        environment={"FAKE_SLURM_STATE": str(cluster.state_file), "PATH": os.defpath},
    )


@pytest.fixture
def slurm(settings: LocalSlurmSettings) -> LocalSlurm:
    return LocalSlurm(settings)


def request(sbatch: str = "testservice.sbatch", walltime: float = 3600.0) -> SubmitRequest:
    return SubmitRequest("chat", sbatch, 20001, "0123456789abcdef", walltime)


def run_command(slurm: LocalSlurm, command: str) -> None:
    """Call the port method that runs ``command``."""
    if command == "sbatch":
        slurm.submit(request())
    elif command == "squeue":
        slurm.jobs()
    else:
        slurm.cancel("5")


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING):
        yield caplog


# -- the round trip ------------------------------------------------------------------


def test_local_slurm_is_a_slurm_port(slurm: LocalSlurm) -> None:
    """LocalSlurm satisfies the Slurm Protocol the controller depends on."""
    port: Slurm = slurm
    assert port is slurm


def test_submit_list_cancel(slurm: LocalSlurm, cluster: FakeCluster) -> None:
    """A submitted job is listed with its service, token and port, and ends CANCELLED."""
    job_id = slurm.submit(request())
    (job,) = slurm.jobs()
    assert (job.job_id, job.service, job.token, job.port) == (job_id, "chat", "0123456789abcdef",
                                                              20001)
    assert (job.state, job.batch_host, job.time_limit) == (SlurmState.RUNNING, "node1", 3600.0)
    slurm.cancel(job_id)
    (job,) = slurm.jobs()
    assert job.state is SlurmState.CANCELLED


def test_sbatch_argv(slurm: LocalSlurm, cluster: FakeCluster, sbatch_dir: Path) -> None:
    """sbatch gets --parsable, the saia name, comment, walltime in minutes, script and port."""
    slurm.submit(request())
    (call,) = cluster.calls("sbatch")
    assert call["args"] == [
        "--parsable",
        "--job-name=saia-chat",
        "--comment=saia:0123456789abcdef:20001",
        "--time=60",
        "--export=ALL",
        str(sbatch_dir / "testservice.sbatch"),
        "20001",
    ]


def test_sbatch_argv_with_output_dir_and_operator_options(
    settings: LocalSlurmSettings, cluster: FakeCluster, tmp_path: Path, sbatch_dir: Path
) -> None:
    """Output goes to <dir>/saia-%j.out; operator options follow saia's, before the script."""
    slurm = LocalSlurm(replace(settings, job_output_dir=tmp_path / "out",
                               sbatch_args=("--partition=gpu", "--account=llm")))
    slurm.submit(request())
    (call,) = cluster.calls("sbatch")
    assert call["args"][5:] == [
        f"--output={tmp_path / 'out' / 'saia-%j.out'}",
        "--partition=gpu",
        "--account=llm",
        str(sbatch_dir / "testservice.sbatch"),
        "20001",
    ]


def test_a_services_job_settings_follow_the_operators_options(
    settings: LocalSlurmSettings, cluster: FakeCluster, sbatch_dir: Path
) -> None:
    """The service's sbatch options come after sbatch_args (the last of an option wins) and
    its variables and container reach sbatch's environment, never its command line."""
    jobs = {"chat": job_settings.parse({
        "partition": "gpu", "cpus_per_task": 8, "gres": "gpu:1", "container": "/i/vllm.sif",
        "env": {"SAIA_VLLM_MODEL": "/models/chat"},
    })}  # fmt: skip
    slurm = LocalSlurm(replace(settings, sbatch_args=("--partition=cpu",), jobs=jobs))
    slurm.submit(request())
    (call,) = cluster.calls("sbatch")
    assert call["args"][5:] == [
        "--partition=cpu", "--partition=gpu", "--gres=gpu:1", "--cpus-per-task=8",
        str(sbatch_dir / "testservice.sbatch"), "20001",
    ]  # fmt: skip
    assert call["env"]["SAIA_VLLM_MODEL"] == "/models/chat"
    assert call["env"]["SAIA_CONTAINER_IMAGE"] == "/i/vllm.sif"
    assert call["env"]["SAIA_SERVICE"] == "chat"
    assert not any("/models" in argument for argument in call["args"])


def test_other_services_get_none_of_a_services_job_settings(
    settings: LocalSlurmSettings, cluster: FakeCluster
) -> None:
    """Settings apply to their own service only."""
    jobs = {"other": job_settings.parse({"mem": "1G", "env": {"ONLY_OTHER": "1"}})}
    LocalSlurm(replace(settings, jobs=jobs)).submit(request())
    (call,) = cluster.calls("sbatch")
    assert not any(argument.startswith("--mem") for argument in call["args"])
    assert "ONLY_OTHER" not in call["env"]


def test_jobs_get_saia_python(slurm: LocalSlurm, cluster: FakeCluster) -> None:
    """sbatch runs with SAIA_PYTHON set to the job python, on top of the given environment."""
    slurm.submit(request())
    (call,) = cluster.calls("sbatch")
    assert call["env"]["SAIA_PYTHON"] == "/opt/saia/venv/bin/python"
    assert call["env"]["FAKE_SLURM_STATE"] == str(cluster.state_file)


def test_jobs_get_their_secret_in_the_environment_never_in_argv(
    settings: LocalSlurmSettings, cluster: FakeCluster
) -> None:
    """With job_secret (login-node placement), SAIA_JOB_SECRET is the token's secret."""
    LocalSlurm(replace(settings, job_secret=lambda token: f"secret-of-{token}")).submit(request())
    (call,) = cluster.calls("sbatch")
    assert call["env"]["SAIA_JOB_SECRET"] == "secret-of-0123456789abcdef"
    assert not any("secret-of" in argument for argument in call["args"])


def test_without_a_secret_jobs_get_none(slurm: LocalSlurm, cluster: FakeCluster) -> None:
    """No job_secret configured: no SAIA_JOB_SECRET, and the job answers anyone."""
    slurm.submit(request())
    (call,) = cluster.calls("sbatch")
    assert "SAIA_JOB_SECRET" not in call["env"]


@pytest.mark.parametrize(
    ("seconds", "minutes"), [(0.5, 1), (59.0, 1), (60.0, 1), (61.0, 2), (3600.0, 60), (5400.5, 91)]
)
def test_walltime_rounds_up_to_whole_minutes(seconds: float, minutes: int) -> None:
    """--time is in minutes, rounded up so a job never gets less than it asked for."""
    assert walltime_minutes(seconds) == minutes


def test_squeue_argv_and_environment(
    settings: LocalSlurmSettings, cluster: FakeCluster
) -> None:
    """squeue lists every state, in UTC, without variables that would filter or reformat it."""
    environment = {**dict(settings.environment or {}), "SQUEUE_PARTITION": "other",
                   "SLURM_TIME_FORMAT": "relative", "SLURM_CONF": "/etc/slurm/slurm.conf"}
    LocalSlurm(replace(settings, environment=environment)).jobs()
    (call,) = cluster.calls("squeue")
    assert call["args"] == ["--noheader", "--all", "--states=all", f"--format={SQUEUE_FORMAT}"]
    assert call["env"]["TZ"] == "UTC"
    assert call["env"]["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert "SQUEUE_PARTITION" not in call["env"]
    assert "SLURM_TIME_FORMAT" not in call["env"]


def test_user_setting_filters_listing_and_cancelling(
    settings: LocalSlurmSettings, cluster: FakeCluster
) -> None:
    """With a user, squeue lists and scancel touches only that user's jobs."""
    cluster.add_job(id="7", name="saia-chat", comment="saia:00000000000000aa:20002", user="root")
    slurm = LocalSlurm(replace(settings, user="saia"))
    assert slurm.jobs() == []
    slurm.cancel("7")
    assert cluster.calls("squeue")[0]["args"][-1] == "--user=saia"
    assert cluster.calls("scancel")[0]["args"] == ["--user=saia", "7"]
    assert cluster.read()["jobs"][0]["state"] == "RUNNING"


def test_jobs_skip_other_users_jobs(slurm: LocalSlurm, cluster: FakeCluster) -> None:
    """A job not named saia-* is not listed."""
    cluster.add_job(id="5", name="analysis-batch")
    slurm.submit(request())
    assert [job.service for job in slurm.jobs()] == ["chat"]


def test_malformed_saia_job_is_warned_about_once(
    slurm: LocalSlurm, cluster: FakeCluster, quiet_log: pytest.LogCaptureFixture
) -> None:
    """A saia-* job without saia's comment is skipped, with one warning, not one per pass."""
    cluster.add_job(id="5", name="saia-chat", comment="(null)")
    assert slurm.jobs() == []
    assert slurm.jobs() == []
    warnings = [r for r in quiet_log.records if "job 5" in r.getMessage()]
    assert len(warnings) == 1


# -- refusals before sbatch runs -----------------------------------------------------


@pytest.mark.parametrize(
    "script",
    ["../testservice.sbatch", "sub/testservice.sbatch", "/bin/sh", "..", ".", "", ".hidden",
     "-x", "missing.sbatch", "testservice.sbatch\n"],
)
def test_script_must_be_a_plain_name_in_the_sbatch_dir(
    slurm: LocalSlurm, cluster: FakeCluster, script: str
) -> None:
    """Paths, dot names and missing files are refused before sbatch runs."""
    with pytest.raises(InvalidSubmission):
        slurm.submit(request(sbatch=script))
    assert cluster.calls("sbatch") == []


def test_script_outside_the_dir_is_refused_even_if_it_exists(
    slurm: LocalSlurm, cluster: FakeCluster, sbatch_dir: Path
) -> None:
    """A script next to the sbatch dir cannot be reached by '..'."""
    (sbatch_dir.parent / "evil.sbatch").write_text("#!/bin/bash\n")
    with pytest.raises(SubmissionRejected):
        slurm.submit(request(sbatch="../evil.sbatch"))
    assert cluster.calls("sbatch") == []


@pytest.mark.parametrize(
    "bad",
    [
        SubmitRequest("chat", "testservice.sbatch", 20001, "0123456789ABCDEF", 60.0),
        SubmitRequest("chat", "testservice.sbatch", 20001, "0123", 60.0),
        SubmitRequest("chat|x", "testservice.sbatch", 20001, "0123456789abcdef", 60.0),
        SubmitRequest("chat", "testservice.sbatch", 0, "0123456789abcdef", 60.0),
        SubmitRequest("chat", "testservice.sbatch", 70000, "0123456789abcdef", 60.0),
        SubmitRequest("chat", "testservice.sbatch", 20001, "0123456789abcdef", 0.0),
        SubmitRequest("chat", "testservice.sbatch", 20001, "0123456789abcdef", float("inf")),
        SubmitRequest("chat", "testservice.sbatch", 20001, "0123456789abcdef", float("nan")),
    ],
)
def test_requests_saia_could_not_read_back_are_refused(
    slurm: LocalSlurm, cluster: FakeCluster, bad: SubmitRequest
) -> None:
    """A token, service, port or walltime that would not round-trip through squeue is refused."""
    with pytest.raises(InvalidSubmission):
        slurm.submit(bad)
    assert cluster.calls("sbatch") == []


@pytest.mark.parametrize("job_id", ["", "0", "12_1", "-u saia", "--user=saia", "12 13", "abc"])
def test_cancel_refuses_anything_but_a_job_id(
    slurm: LocalSlurm, cluster: FakeCluster, job_id: str
) -> None:
    """scancel only ever gets a plain job id: no options, arrays or lists slip in."""
    with pytest.raises(SlurmError):
        slurm.cancel(job_id)
    assert cluster.calls("scancel") == []


def test_settings_must_use_absolute_paths(settings: LocalSlurmSettings) -> None:
    """Relative paths would depend on the working directory: refused at construction."""
    with pytest.raises(ValueError, match="sbatch_dir"):
        LocalSlurm(replace(settings, sbatch_dir=Path("sbatch")))
    with pytest.raises(ValueError, match="job_python"):
        LocalSlurm(replace(settings, job_python="python3"))
    with pytest.raises(ValueError, match="squeue"):
        LocalSlurm(replace(settings, commands=SlurmCommands(squeue="squeue")))


@pytest.mark.parametrize(
    "arg", ["--job-name=x", "-Jx", "--comment=x", "--parsable", "--export=NONE"]
)
def test_operator_options_cannot_take_saias_identity(
    settings: LocalSlurmSettings, arg: str
) -> None:
    """Extra sbatch options may not rename the job, change its comment (saia finds it by
    those) or keep saia's variables from it."""
    with pytest.raises(ValueError, match="saia sets it itself"):
        LocalSlurm(replace(settings, sbatch_args=("--partition=gpu", arg)))


# -- how failures map ----------------------------------------------------------------


def test_sbatch_refusal_is_submission_rejected(slurm: LocalSlurm, cluster: FakeCluster) -> None:
    """sbatch exiting non-zero with its own error is SubmissionRejected, carrying stderr."""
    stderr = (Path(__file__).parent.parent / "data" / "slurm" / "sbatch-error.txt").read_text()
    cluster.behave("sbatch", exit=1, stderr=stderr)
    with pytest.raises(SubmissionRejected, match="Invalid partition name specified") as caught:
        slurm.submit(request())
    assert not isinstance(caught.value, SlurmUnavailable)


@pytest.mark.parametrize(
    ("command", "exit_code"), [("sbatch", 1), ("squeue", 1), ("scancel", 8)]
)
def test_unreachable_controller_is_unavailable(
    slurm: LocalSlurm, cluster: FakeCluster, command: str, exit_code: int
) -> None:
    """'Unable to contact slurm controller' (recorded exit codes) is SlurmUnavailable for all."""
    cluster.add_job(id="5", name="saia-chat", comment="saia:0123456789abcdef:20001")
    cluster.behave(command, exit=exit_code, stderr=UNREACHABLE)
    with pytest.raises(SlurmUnavailable) as caught:
        run_command(slurm, command)
    assert not isinstance(caught.value, SlurmTimeout)
    assert not isinstance(caught.value, SubmissionRejected)


def test_slurm_rpc_timeout_on_sbatch_leaves_the_outcome_open(
    slurm: LocalSlurm, cluster: FakeCluster
) -> None:
    """sbatch's 'Socket timed out' may hide a submitted job: SlurmTimeout, not a rejection."""
    cluster.behave("sbatch", exit=1, stderr="sbatch: error: Batch job submission failed: "
                   "Socket timed out on send/recv operation\n")
    with pytest.raises(SlurmTimeout):
        slurm.submit(request())


def test_sbatch_without_job_id_is_unconfirmed(slurm: LocalSlurm, cluster: FakeCluster) -> None:
    """sbatch exiting 0 without a readable id leaves the outcome open (a SlurmTimeout)."""
    cluster.behave("sbatch", exit=0, stdout="Submitted batch job 12\n")
    with pytest.raises(SubmissionUnconfirmed):
        slurm.submit(request())


@pytest.mark.parametrize("command", ["sbatch", "squeue", "scancel"])
def test_hanging_command_times_out(
    settings: LocalSlurmSettings, cluster: FakeCluster, command: str
) -> None:
    """A command that hangs is killed after the timeout and raises SlurmTimeout."""
    cluster.behave(command, sleep=30)
    slurm = LocalSlurm(replace(settings, timeout=0.5))
    started = time.monotonic()
    with pytest.raises(SlurmTimeout, match=r"0\.5 s"):
        run_command(slurm, command)
    assert time.monotonic() - started < 5


def test_squeue_failure_is_a_slurm_error(slurm: LocalSlurm, cluster: FakeCluster) -> None:
    """squeue exiting non-zero for another reason is a SlurmError with its stderr."""
    cluster.behave("squeue", exit=1, stderr="squeue: error: Invalid job id specified\n")
    with pytest.raises(SlurmError, match="Invalid job id specified") as caught:
        slurm.jobs()
    assert not isinstance(caught.value, SlurmUnavailable)


def test_squeue_error_with_exit_zero_is_not_an_empty_queue(
    slurm: LocalSlurm, cluster: FakeCluster
) -> None:
    """Seen: `squeue -u nosuchuser` exits 0, prints an error and no jobs: that raises."""
    cluster.behave("squeue", exit=0, stderr="squeue: error: Invalid user: nosuchuser\n\n")
    with pytest.raises(SlurmError, match="Invalid user"):
        slurm.jobs()


def test_squeue_output_not_understood(slurm: LocalSlurm, cluster: FakeCluster) -> None:
    """Output that is not the asked-for format raises SlurmError, not an empty list."""
    cluster.behave("squeue", exit=0, stdout="JOBID PARTITION NAME\n42 debug saia-chat\n")
    with pytest.raises(SlurmError, match="expected 9 fields"):
        slurm.jobs()


def test_cancel_of_unknown_job_is_fine(settings: LocalSlurmSettings) -> None:
    """scancel of a job that is gone succeeds, with or without the user filter."""
    LocalSlurm(settings).cancel("999999")
    LocalSlurm(replace(settings, user="saia")).cancel("999999")


def test_cancel_of_someone_elses_job_is_an_error(
    slurm: LocalSlurm, cluster: FakeCluster
) -> None:
    """scancel's access denied (exit 210, recorded) is a SlurmError with its message."""
    cluster.add_job(id="9", name="analysis-batch", user="root")
    with pytest.raises(SlurmError, match="Access/permission denied"):
        slurm.cancel("9")


def test_missing_command_is_a_slurm_error(settings: LocalSlurmSettings) -> None:
    """A command that does not exist is a SlurmError naming it."""
    slurm = LocalSlurm(replace(settings, commands=SlurmCommands(squeue="/nonexistent/squeue")))
    with pytest.raises(SlurmError, match="/nonexistent/squeue"):
        slurm.jobs()


def test_sbatch_warnings_are_logged(
    slurm: LocalSlurm, cluster: FakeCluster, quiet_log: pytest.LogCaptureFixture
) -> None:
    """sbatch succeeding with a warning on stderr still returns the id; the warning is logged."""
    cluster.behave("sbatch", exit=0, stdout="77\n", stderr="sbatch: warning: something odd\n")
    assert slurm.submit(request()) == "77"
    assert "something odd" in quiet_log.text
