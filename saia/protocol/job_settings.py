"""A service's job settings: the sbatch options, environment and container of its jobs.

One parser for both places they are written: the login node's entrypoint.toml
(``[services.<id>]``, beside ``sbatch`` and ``time_limit``; hub placement) and
saia.toml (``[jobs.<id>]``; login-node placement, where saia submits itself)::

    partition = "gpu"                  # sbatch --partition, instead of the file's own
    account = "llm"                    # --account, likewise
    gres = "gpu:a100:4"                # --gres
    gpus = "4"                         # --gpus
    constraint = "a100&ib"             # --constraint
    mem = "64G"                        # --mem
    cpus_per_task = 8                  # --cpus-per-task: a whole number
    container = "/images/vllm.sif"     # the job gets it as SAIA_CONTAINER_IMAGE
    env = { SAIA_VLLM_MODEL = "/models/llama-3.1-8b", HF_HOME = "/models/hf" }

Option values are Slurm words: [A-Za-z0-9_.,:+-], and '&' and '|' in a
constraint. No other option can be set here: this list is what a service's
jobs may ask of Slurm.

The variables reach the job as saia's own do: in sbatch's environment, which
sbatch exports to the job (``--export=ALL``). So sbatch on this host reads them
too, and a name is refused when it is saia's or would change the submission or
what runs before the script's first line:

- saia's: SAIA_PYTHON, SAIA_SERVICE, SAIA_PORT, SAIA_JOB_SECRET and
  SAIA_CONTAINER_IMAGE (set by ``container``); other SAIA_* names are the
  scripts' own settings (SAIA_VLLM_MODEL) and are allowed;
- Slurm's: SLURM_*, SBATCH_*, SALLOC_*, SRUN_*, which its commands read as
  options (SBATCH_PARTITION would get round this list);
- the loader's and the shell's: LD_* (LD_PRELOAD, LD_LIBRARY_PATH would load
  libraries into sbatch itself), BASH_ENV, ENV, SHELLOPTS, BASHOPTS, PS4, IFS;
- the account's: PATH, HOME, USER, LOGNAME. A script changes PATH and
  LD_LIBRARY_PATH in its own setup (modules, a venv), on the compute node.

Names are [A-Z_][A-Z0-9_]*, at most 128 characters; at most 64 variables, each
value a string of at most 4096 characters without control characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

SLURM_WORD = re.compile(r"[A-Za-z0-9_.,:+-]{1,128}")
CONSTRAINT = re.compile(r"[A-Za-z0-9_.,:+&|-]{1,128}")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_VARIABLES = 64
MAX_VALUE = 4096
MAX_CPUS_PER_TASK = 100_000

CONTAINER_VARIABLE = "SAIA_CONTAINER_IMAGE"
SAIAS_VARIABLES = frozenset(
    {"SAIA_PYTHON", "SAIA_SERVICE", "SAIA_PORT", "SAIA_JOB_SECRET", CONTAINER_VARIABLE}
)
SLURMS_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")
LOADER_PREFIX = "LD_"
SHELLS_VARIABLES = frozenset({"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS"})
ACCOUNTS_VARIABLES = frozenset({"PATH", "HOME", "USER", "LOGNAME"})

# Each key's sbatch option, in the order they are passed.
OPTIONS = {
    "partition": "--partition",
    "account": "--account",
    "gres": "--gres",
    "gpus": "--gpus",
    "constraint": "--constraint",
    "mem": "--mem",
    "cpus_per_task": "--cpus-per-task",
}
KEYS = frozenset({*OPTIONS, "env", "container"})


class JobSettingsError(ValueError):
    """``field`` is the key in the service's table, e.g. ``env.LD_PRELOAD``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# A NamedTuple, not a dataclass: the login node's keep-alive reads the file too.
class JobSettings(NamedTuple):
    options: tuple[tuple[str, str], ...] = ()  # (key of OPTIONS, value), in OPTIONS' order
    env: tuple[tuple[str, str], ...] = ()
    container: str = ""  # an absolute path, or ""

    def sbatch_options(self, account: str = "", partition: str = "") -> list[str]:
        """``--option=value`` for each setting; ``account`` and ``partition`` are the
        defaults of the whole file, which the service's own replace."""
        values = {"account": account, "partition": partition, **dict(self.options)}
        return [f"{option}={values[key]}" for key, option in OPTIONS.items() if values.get(key)]

    def environment(self) -> dict[str, str]:
        """The variables the job gets besides saia's own."""
        variables = dict(self.env)
        if self.container:
            variables[CONTAINER_VARIABLE] = self.container
        return variables

    def variables(self, python: str, service: str, port: int, secret: str) -> dict[str, str]:
        """All the job's variables: these settings' and saia's own (which no setting may
        name). The job learns its service and port from here as well as from $1, and its
        secret only from here (saia.protocol.job_secret); "" for none."""
        variables = {**self.environment(), "SAIA_PYTHON": python, "SAIA_SERVICE": service,
                     "SAIA_PORT": str(port)}  # fmt: skip
        if secret:
            variables["SAIA_JOB_SECRET"] = secret
        return variables


def parse(table: Mapping[str, Any]) -> JobSettings:
    """The job settings among a service's keys; keys outside KEYS are the caller's."""
    options: list[tuple[str, str]] = []
    for key in OPTIONS:
        if key in table:
            options.append((key, _option(key, table[key])))
    return JobSettings(tuple(options), _environment(table.get("env", {})), _container(table))


def refusal(name: str) -> str:  # noqa: PLR0911 (one return per rule)
    """Why ``name`` may not be set for a job, or "" if it may."""
    if not ENV_NAME.fullmatch(name):
        return "a variable's name must be [A-Z_][A-Z0-9_]*, at most 128 characters"
    if name == CONTAINER_VARIABLE:
        return "saia sets it from container"
    if name in SAIAS_VARIABLES:
        return "saia sets it itself"
    if name.startswith(SLURMS_PREFIXES):
        return "Slurm's commands read it as an option"
    if name.startswith(LOADER_PREFIX) or name in SHELLS_VARIABLES:
        return "it changes what runs before the job's script (set it in the script's setup)"
    if name in ACCOUNTS_VARIABLES:
        return "it is the account's own (set it in the script's setup)"
    return ""


def _option(key: str, value: Any) -> str:
    if key == "cpus_per_task":
        if not isinstance(value, int) or isinstance(value, bool):
            raise JobSettingsError(key, "must be a whole number")
        if not 1 <= value <= MAX_CPUS_PER_TASK:
            raise JobSettingsError(key, f"must be from 1 to {MAX_CPUS_PER_TASK}")
        return str(value)
    pattern = CONSTRAINT if key == "constraint" else SLURM_WORD
    if not isinstance(value, str) or not pattern.fullmatch(value):
        extra = ", & and |" if key == "constraint" else ""
        message = f"must be a string of 1-128 of [A-Za-z0-9_.,:+-]{extra}"
        raise JobSettingsError(key, message)
    return value


def _environment(table: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(table, dict):
        raise JobSettingsError("env", "must be a table of NAME = \"value\"")
    if len(table) > MAX_VARIABLES:
        raise JobSettingsError("env", f"at most {MAX_VARIABLES} variables")
    for name, value in table.items():
        why = refusal(name)
        if why:
            raise JobSettingsError(f"env.{name}", why)
        if not isinstance(value, str) or len(value) > MAX_VALUE or CONTROL.search(value):
            message = f"must be a string of at most {MAX_VALUE} characters, no control characters"
            raise JobSettingsError(f"env.{name}", message)
    return tuple(table.items())


def _container(table: Mapping[str, Any]) -> str:
    value = table.get("container", "")
    if not isinstance(value, str) or len(value) > MAX_VALUE or CONTROL.search(value):
        raise JobSettingsError("container", "must be the absolute path of an image")
    if value and not value.startswith("/"):
        raise JobSettingsError("container", "must be an absolute path")
    return value
