"""entrypoint.toml's services: their jobs' settings, and each bad value named by file and field."""

from __future__ import annotations

from typing import Any

import pytest

from saia.entrypoint.config import ConfigError, parse
from saia.protocol.job_settings import JobSettings

PATH = "/etc/saia/entrypoint.toml"


def config_with(**service: Any) -> dict[str, Any]:
    entry = {"sbatch": "vllm.sbatch", "time_limit": 30, **service}
    return {"sbatch_dir": "/opt/sbatch", "state_dir": "/var/lib/saia", "services": {"llm": entry}}


def refusal(**service: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(PATH, config_with(**service))
    return caught.value


def test_a_service_without_job_settings_has_none() -> None:
    """sbatch and time_limit alone, as before: no options, no environment, no container."""
    rule = parse(PATH, config_with()).services["llm"]
    assert (rule.sbatch, rule.time_limit, rule.job) == ("vllm.sbatch", 30, JobSettings())


def test_every_job_setting_is_read() -> None:
    """Options in sbatch's order, the environment as written, the container as its variable."""
    rule = parse(PATH, config_with(
        gres="gpu:a100:4", gpus="a100:4", partition="gpu", account="llm",
        constraint="a100&ib|h100", mem="64G", cpus_per_task=8,
        container="/images/vllm.sif",
        env={"SAIA_VLLM_MODEL": "/models/llama", "HF_HOME": "/models/hf", "NCCL_DEBUG": ""},
    )).services["llm"]  # fmt: skip
    assert rule.job.sbatch_options() == [
        "--partition=gpu", "--account=llm", "--gres=gpu:a100:4", "--gpus=a100:4",
        "--constraint=a100&ib|h100", "--mem=64G", "--cpus-per-task=8",
    ]  # fmt: skip
    assert rule.job.environment() == {
        "SAIA_VLLM_MODEL": "/models/llama", "HF_HOME": "/models/hf", "NCCL_DEBUG": "",
        "SAIA_CONTAINER_IMAGE": "/images/vllm.sif",
    }  # fmt: skip


def test_a_services_account_and_partition_replace_the_files() -> None:
    """The file's account and partition apply to services that set none of their own."""
    data = config_with(partition="gpu")
    data.update(account="everyone", partition="cpu")
    job = parse(PATH, data).services["llm"].job
    assert job.sbatch_options("everyone", "cpu") == ["--partition=gpu", "--account=everyone"]


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ({"gres": "gpu:1 --wrap=id"}, "gres"),
        ({"gres": ""}, "gres"),
        ({"gpus": 4}, "gpus"),
        ({"partition": "gpu;id"}, "partition"),
        ({"account": "a/b"}, "account"),
        ({"constraint": "a100$(id)"}, "constraint"),
        ({"mem": "x" * 129}, "mem"),
        ({"cpus_per_task": 0}, "cpus_per_task"),
        ({"cpus_per_task": "8"}, "cpus_per_task"),
        ({"cpus_per_task": True}, "cpus_per_task"),
        ({"container": "images/vllm.sif"}, "container"),
        ({"container": "/images/a\nb.sif"}, "container"),
        ({"container": 1}, "container"),
        ({"env": ["A=b"]}, "env"),
        ({"env": {f"V{i}": "" for i in range(65)}}, "env"),
        ({"env": {"lower": "x"}}, "env.lower"),
        ({"env": {"1ST": "x"}}, "env.1ST"),
        ({"env": {"NAME": 1}}, "env.NAME"),
        ({"env": {"NAME": "a\nb"}}, "env.NAME"),
        ({"env": {"NAME": "x" * 4097}}, "env.NAME"),
        ({"nodes": 2}, "nodes"),
    ],
)
def test_bad_job_settings_are_refused_naming_file_and_field(
    setting: dict[str, Any], field: str
) -> None:
    """Each bad value is refused as a whole file, naming the file and services.<id>.<field>."""
    error = refusal(**setting)
    assert error.path == PATH and error.field == f"services.llm.{field}"
    assert str(error).startswith(f"{PATH}: field 'services.llm.{field}': ")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("SAIA_JOB_SECRET", "saia sets it itself"),
        ("SAIA_SERVICE", "saia sets it itself"),
        ("SAIA_PORT", "saia sets it itself"),
        ("SAIA_PYTHON", "saia sets it itself"),
        ("SAIA_CONTAINER_IMAGE", "saia sets it from container"),
        ("SLURM_CONF", "Slurm's commands read it"),
        ("SBATCH_PARTITION", "Slurm's commands read it"),
        ("SRUN_CPUS_PER_TASK", "Slurm's commands read it"),
        ("SALLOC_ACCOUNT", "Slurm's commands read it"),
        ("LD_PRELOAD", "before the job's script"),
        ("LD_LIBRARY_PATH", "before the job's script"),
        ("BASH_ENV", "before the job's script"),
        ("ENV", "before the job's script"),
        ("PS4", "before the job's script"),
        ("PATH", "the account's own"),
        ("HOME", "the account's own"),
    ],
)
def test_variables_of_saia_slurm_the_loader_and_the_account_are_refused(
    name: str, why: str
) -> None:
    """The environment may not set saia's, Slurm's, the loader's or the shell's variables."""
    error = refusal(env={name: "x"})
    assert error.field == f"services.llm.env.{name}"
    assert why in error.message


def test_the_scripts_own_saia_variables_are_allowed() -> None:
    """Other SAIA_* names configure the scripts (SAIA_VLLM_MODEL) and pass."""
    env = {"SAIA_VLLM_MODEL": "/m", "SAIA_VLLM_ALIASES": "a b", "SAIA_TEST_TOKEN_DELAY": "0.1"}
    assert parse(PATH, config_with(env=env)).services["llm"].job.environment() == env
