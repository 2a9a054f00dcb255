"""How the process was started: the only module of saia.entrypoint that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

USAGE = "usage: saia-entrypoint --config /absolute/path/entrypoint.toml"
# All that Slurm's commands, the jobs (sbatch hands its environment on) and a
# login-node controller get of this process's environment. Whatever else the SSH
# client may have set (SLURM_*, SBATCH_*, SQUEUE_* would change what Slurm does,
# LD_PRELOAD what runs) never reaches them; SLURM_CONF comes from the configuration.
KEPT_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class UsageError(Exception):
    """The forced command line itself is wrong: a mistake in authorized_keys."""


class Invocation(NamedTuple):
    config: str  # plain str: pathlib would add to every start-up
    command: bytes | None  # SSH_ORIGINAL_COMMAND as sshd set it; None when absent
    environment: Mapping[str, str]  # for the commands it runs: KEPT_VARIABLES only


def from_environment(argv: Sequence[str]) -> Invocation:
    """The invocation from ``argv`` (without the program name) and the environment.

    The command is read as bytes (os.environb), so invalid UTF-8 reaches the
    grammar as it was sent, to be refused there, instead of being decoded here.
    """
    environment = {name: os.environ[name] for name in KEPT_VARIABLES if name in os.environ}
    environment.setdefault("PATH", DEFAULT_PATH)
    return Invocation(
        config=_config_path(argv),
        command=os.environb.get(b"SSH_ORIGINAL_COMMAND"),
        environment=environment,
    )


def _config_path(argv: Sequence[str]) -> str:
    # Two fixed forms only: argparse would cost more start-up time than it saves.
    if len(argv) == 2 and argv[0] == "--config":
        value = argv[1]
    elif len(argv) == 1 and argv[0].startswith("--config="):
        value = argv[0][len("--config=") :]
    else:
        raise UsageError(USAGE)
    if not os.path.isabs(value):
        raise UsageError(f"{USAGE} (the path must be absolute)")
    return value
