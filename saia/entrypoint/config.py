"""The login node's own configuration: what the hub may start here, and how.

A TOML file named by ``--config`` in the forced command. The hub cannot change
it: it is the allowlist that bounds what a compromised hub can do. Every path
must be absolute, because the forced command runs from the user's home with
sshd's default PATH. A bad file raises ConfigError naming the file and the
field; the entrypoint then exits with exits.CONFIG (78). Example::

    sbatch_dir = "/opt/saia/sbatch"        # scripts are plain names in this folder
    state_dir = "/var/lib/saia-entrypoint" # queue cache and locks (created 0700)
    job_output_dir = "/scratch/saia/jobs"  # sbatch --output folder; "" = Slurm's default
    job_python = "/opt/saia/.venv/bin/python"  # SAIA_PYTHON for the jobs
    port_min = 20000
    port_max = 29999
    account = "llm"                        # sbatch --account; "" = none; a service's own wins
    partition = "gpu"                      # sbatch --partition; "" = the default; likewise
    sbatch_args = ["--gres=gpu:1"]         # for every job, before a service's own options
    queue_cache_seconds = 2.0              # how long forward trusts a look at the queue
    slurm_timeout = 30.0
    connect_timeout = 5.0                  # to a job's port
    probe_timeout = 2.0                    # a whole probe
    idle_timeout = 300.0                   # longest silence of a backend mid-response
    max_body_bytes = 67108864              # largest request body accepted on stdin

    [commands]                             # absolute paths of the Slurm commands
    sbatch = "/usr/bin/sbatch"
    squeue = "/usr/bin/squeue"
    scancel = "/usr/bin/scancel"
    slurm_conf = ""                        # SLURM_CONF for them; "" = Slurm's default

    [services.llama]
    sbatch = "vllm.sbatch"
    time_limit = 60                        # minutes (sbatch --time)
    # Its jobs' settings, all optional (saia.protocol.job_settings): partition, account,
    # gres, gpus, constraint, mem, cpus_per_task, container and env.
    gres = "gpu:1"
    container = "/opt/images/vllm.sif"     # the job's SAIA_CONTAINER_IMAGE
    env = { SAIA_VLLM_MODEL = "/models/llama-3.1-8b-instruct" }

    [login_node]                           # only in login-node placement
    controller_command = ["/opt/saia/.venv/bin/saia", "--config", "/opt/saia/saia.toml",
                          "tick"]
    min_interval = 5.0                     # seconds between passes started by keep-alive
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from saia.protocol import job_settings
from saia.protocol.ids import SBATCH_NAME, SERVICE_ID
from saia.protocol.job_settings import SLURM_WORD, JobSettings, JobSettingsError

SBATCH_OPTION = re.compile(r"--([a-z][a-z-]{0,40})(=[A-Za-z0-9_.,:/@%+=-]{1,256})?")
# Options saia sets itself, or that would run something other than an allowed script.
RESERVED_SBATCH_OPTIONS = frozenset(
    {"comment", "error", "export", "input", "job-name", "output", "time", "wrap"}
)


class ConfigError(ValueError):
    def __init__(self, path: str, field: str, message: str) -> None:
        where = f"{path}: field {field!r}" if field else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.field = field
        self.message = message


# NamedTuples, not dataclasses: importing dataclasses costs every keep-alive more
# than reading this file.
class ServiceRule(NamedTuple):
    id: str
    sbatch: str  # a file name in sbatch_dir
    time_limit: int = 60  # minutes
    job: JobSettings = JobSettings()  # options, environment and container of its jobs


class SlurmCommands(NamedTuple):
    sbatch: str = "/usr/bin/sbatch"
    squeue: str = "/usr/bin/squeue"
    scancel: str = "/usr/bin/scancel"
    slurm_conf: str = ""


class LoginNodePlacement(NamedTuple):
    controller_command: tuple[str, ...]
    min_interval: float = 5.0


class EntrypointConfig(NamedTuple):
    path: str
    sbatch_dir: str
    state_dir: str
    services: Mapping[str, ServiceRule]
    job_output_dir: str = ""
    job_python: str = ""
    port_min: int = 20000
    port_max: int = 29999
    account: str = ""
    partition: str = ""
    sbatch_args: tuple[str, ...] = ()
    queue_cache_seconds: float = 2.0
    slurm_timeout: float = 30.0
    connect_timeout: float = 5.0
    probe_timeout: float = 2.0
    idle_timeout: float = 300.0
    max_body_bytes: int = 64 * 1024 * 1024
    commands: SlurmCommands = SlurmCommands()
    login_node: LoginNodePlacement | None = None

    def allows_port(self, port: int) -> bool:
        return self.port_min <= port <= self.port_max

    # Paths are plain strings in this package: pathlib would add to every start-up.
    @property
    def queue_cache(self) -> str:
        return os.path.join(self.state_dir, "queue.json")

    @property
    def submit_lock(self) -> str:
        return os.path.join(self.state_dir, "submit.lock")

    @property
    def keep_alive_lock(self) -> str:
        return os.path.join(self.state_dir, "keep-alive.lock")

    @property
    def keep_alive_stamp(self) -> str:
        return os.path.join(self.state_dir, "keep-alive.stamp")


_TOP_LEVEL = {
    "sbatch_dir",
    "state_dir",
    "job_output_dir",
    "job_python",
    "port_min",
    "port_max",
    "account",
    "partition",
    "sbatch_args",
    "queue_cache_seconds",
    "slurm_timeout",
    "connect_timeout",
    "probe_timeout",
    "idle_timeout",
    "max_body_bytes",
    "commands",
    "services",
    "login_node",
}


def load(path: str) -> EntrypointConfig:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror}") from None
    try:
        import tomllib  # noqa: PLC0415 (Python 3.11 and newer)
    except ImportError:  # older Pythons: the copy of tomli the single-file install carries
        import tomli as tomllib  # type: ignore[no-redef, import-not-found, unused-ignore]  # noqa: PLC0415
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None
    return parse(path, data)


def parse(path: str, data: Mapping[str, Any]) -> EntrypointConfig:
    """Validate the whole file before any of it is used."""
    read = _Reader(path)
    read.only(data, _TOP_LEVEL, "")
    port_min = read.integer(data, "port_min", 20000, 1024, 65535)
    port_max = read.integer(data, "port_max", 29999, port_min, 65535)
    return EntrypointConfig(
        path=path,
        sbatch_dir=read.absolute(data, "sbatch_dir", required=True),
        state_dir=read.absolute(data, "state_dir", required=True),
        services=_services(read, read.table(data, "services")),
        job_output_dir=read.absolute(data, "job_output_dir"),
        job_python=read.absolute(data, "job_python"),
        port_min=port_min,
        port_max=port_max,
        account=read.slurm_word(data, "account"),
        partition=read.slurm_word(data, "partition"),
        sbatch_args=read.sbatch_options(data, "sbatch_args"),
        queue_cache_seconds=read.number(data, "queue_cache_seconds", 2.0, minimum=0.0),
        slurm_timeout=read.number(data, "slurm_timeout", 30.0),
        connect_timeout=read.number(data, "connect_timeout", 5.0),
        probe_timeout=read.number(data, "probe_timeout", 2.0),
        idle_timeout=read.number(data, "idle_timeout", 300.0),
        max_body_bytes=read.integer(data, "max_body_bytes", 64 * 1024 * 1024, 0, 2**40),
        commands=_commands(read, read.table(data, "commands")),
        login_node=_login_node(read, data.get("login_node")),
    )


def _services(read: _Reader, data: Mapping[str, Any]) -> dict[str, ServiceRule]:
    services: dict[str, ServiceRule] = {}
    for service_id, entry in data.items():
        where = f"services.{service_id}"
        if not SERVICE_ID.fullmatch(service_id):
            raise ConfigError(read.path, where, "service ids are 1-128 of [A-Za-z0-9._-]")
        if not isinstance(entry, dict):
            raise ConfigError(read.path, where, "must be a table")
        read.only(entry, {"sbatch", "time_limit", *job_settings.KEYS}, where)
        sbatch = entry.get("sbatch")
        if not isinstance(sbatch, str) or not SBATCH_NAME.fullmatch(sbatch):
            message = "must be a plain file name in sbatch_dir"
            raise ConfigError(read.path, f"{where}.sbatch", message)
        time_limit = read.integer(entry, "time_limit", 60, 1, 365 * 24 * 60, where)
        try:
            job = job_settings.parse(entry)
        except JobSettingsError as error:
            raise ConfigError(read.path, f"{where}.{error.field}", error.message) from None
        services[service_id] = ServiceRule(service_id, sbatch, time_limit, job)
    return services


def _commands(read: _Reader, data: Mapping[str, Any]) -> SlurmCommands:
    read.only(data, {"sbatch", "squeue", "scancel", "slurm_conf"}, "commands")
    defaults = SlurmCommands()
    return SlurmCommands(
        sbatch=read.absolute(data, "sbatch", defaults.sbatch, table="commands"),
        squeue=read.absolute(data, "squeue", defaults.squeue, table="commands"),
        scancel=read.absolute(data, "scancel", defaults.scancel, table="commands"),
        slurm_conf=read.absolute(data, "slurm_conf", table="commands"),
    )


def _login_node(read: _Reader, data: Any) -> LoginNodePlacement | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(read.path, "login_node", "must be a table")
    read.only(data, {"controller_command", "min_interval"}, "login_node")
    command = data.get("controller_command")
    where = "login_node.controller_command"
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise ConfigError(read.path, where, "must be a non-empty list of strings")
    if not os.path.isabs(command[0]):
        raise ConfigError(read.path, where, "the program must be an absolute path")
    interval = read.number(data, "min_interval", 5.0, table="login_node")
    return LoginNodePlacement(tuple(command), interval)


class _Reader:
    """Typed getters that name the file and field in every error."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, table: str, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, f"{table}.{key}" if table else key, message)

    def only(self, data: Mapping[str, Any], allowed: set[str], table: str) -> None:
        for key in data:
            if key not in allowed:
                raise self.fail(table, key, "unknown setting")

    def table(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail("", key, "must be a table")
        return value

    def absolute(
        self,
        data: Mapping[str, Any],
        key: str,
        default: str = "",
        *,
        required: bool = False,
        table: str = "",
    ) -> str:
        if required and key not in data:
            raise self.fail(table, key, "missing")
        value = data.get(key, default)
        if not isinstance(value, str):
            raise self.fail(table, key, "must be a string")
        if value and not os.path.isabs(value):
            raise self.fail(table, key, "must be an absolute path")
        return value

    def integer(
        self,
        data: Mapping[str, Any],
        key: str,
        default: int,
        least: int,
        most: int,
        table: str = "",
    ) -> int:
        value = data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
            raise self.fail(table, key, f"must be a whole number from {least} to {most}")
        return value

    def number(
        self,
        data: Mapping[str, Any],
        key: str,
        default: float,
        *,
        minimum: float = 0.001,
        table: str = "",
    ) -> float:
        value = data.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
            raise self.fail(table, key, f"must be a number of at least {minimum}")
        return float(value)

    def slurm_word(self, data: Mapping[str, Any], key: str) -> str:
        value = data.get(key, "")
        if not isinstance(value, str) or (value and not SLURM_WORD.fullmatch(value)):
            raise self.fail("", key, "must be a Slurm name of [A-Za-z0-9_.,:+-]")
        return value

    def sbatch_options(self, data: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if not isinstance(value, list):
            raise self.fail("", key, "must be a list of strings")
        for option in value:
            match = SBATCH_OPTION.fullmatch(option) if isinstance(option, str) else None
            if match is None:
                message = f"{option!r} is not a long option such as --gres=gpu:1"
                raise self.fail("", key, message)
            if match.group(1) in RESERVED_SBATCH_OPTIONS:
                raise self.fail("", key, f"{option!r}: saia sets --{match.group(1)} itself")
        return tuple(value)
