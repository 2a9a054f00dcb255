"""The configuration file: hub settings and the services to run.

A TOML file (``saia.toml``). Services use the field names of SAIA's config.json,
though not always their meaning: saia.saia_import translates such a file. Every
problem raises a ConfigError naming the file, the service and the field; a file is
validated in full before anything in it is used, so a bad file is never half-applied.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from saia.adapters.store import PostgresStore, SqliteStore, StoreSettings
from saia.domain.errors import InvalidSpec
from saia.domain.reconcile import UnknownJobPolicy
from saia.domain.spec import ServiceSpec, check_names
from saia.protocol import job_settings
from saia.protocol.ids import SERVICE_ID
from saia.protocol.job_settings import JobSettings, JobSettingsError
from saia.proxy.settings import ProxySettings


class ConfigError(ValueError):
    def __init__(self, path: Path | str, message: str, service: str = "", field: str = "") -> None:
        where = str(path)
        if service:
            where += f": service {service!r}"
        if field:
            where += f": field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.service = service
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    interval: float = 5.0  # seconds between passes
    startup_interval: float = 0.5  # ... while a job is on its way or a request waits
    probe_interval: float = 10.0  # how often a ready job is probed
    unknown_jobs: UnknownJobPolicy = UnknownJobPolicy.CANCEL
    sbatch_dir: str = "sbatch"
    job_output_dir: str = ""  # empty: Slurm's default (the submit directory)
    job_python: str = ""  # SAIA_PYTHON for jobs; empty: this interpreter
    probe_timeout: float = 2.0
    heartbeat_interval: float = 60.0  # a steady healthy job is recorded this often
    sbatch_args: tuple[str, ...] = ()  # e.g. ("--partition=gpu", "--account=llm")
    slurm_user: str = ""  # whose jobs saia lists and cancels; empty: any user's
    slurm_bin: str = "/usr/bin"  # where sbatch, squeue and scancel are
    # Login-node placement: the entrypoint's state_dir (the same account's). Its key
    # gives the jobs saia starts here their secrets, and its notes of legacy requests
    # (an unmodified SAIA hub's) count as demand. Empty: neither (jobs answer anyone).
    entrypoint_state_dir: str = ""


class Placement(StrEnum):
    HUB = "hub"  # Slurm over the SSH link, through saia-entrypoint on the login node
    LOGIN_NODE = "login-node"  # Slurm's commands on this host


@dataclass(frozen=True, slots=True)
class SshSettings:
    """The hub's one SSH connection to the login node's forced-command key."""

    host: str  # a name, an address, or a Host alias of ssh_config
    user: str | None  # None: ssh_config's User
    key_file: Path | None  # None: ssh_config's IdentityFile
    known_hosts_file: Path  # for the login node and every jump host
    port: int | None = 22  # None: ssh_config's Port, else 22
    keepalive_interval: float = 15.0
    ssh_config: Path | None = None  # the operator's, for aliases and jump hosts
    jump_host: str = ""  # "[user@]host[:port]", as ssh -J; wins over ssh_config's ProxyJump

    @property
    def target(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"


@dataclass(frozen=True, slots=True)
class Listen:
    """Where ``saia serve`` accepts clients: ``host`` and ``port`` of the [proxy] table."""

    host: str = "127.0.0.1"  # behind a gateway or TLS terminator on the same host
    port: int = 8000


LISTEN_KEYS = frozenset({"host", "port"})


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    store: StoreSettings
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    services: tuple[ServiceSpec, ...] = ()
    placement: Placement = Placement.HUB
    ssh: SshSettings | None = None
    proxy: ProxySettings = field(default_factory=ProxySettings)
    listen: Listen = field(default_factory=Listen)
    # Login-node placement: each service's job settings ([jobs.<id>]); in hub placement
    # they are the login node's (its entrypoint.toml).
    jobs: Mapping[str, JobSettings] = field(default_factory=dict)

    def sbatch_dir(self) -> Path:
        return _relative_to(self.path, self.controller.sbatch_dir)

    def entrypoint_state_dir(self) -> Path | None:
        folder = self.controller.entrypoint_state_dir
        return _relative_to(self.path, folder) if folder else None


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(path, f"cannot read: {error.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, f"not valid TOML: {error}") from None
    return parse(path, data)


def parse(path: Path, data: Mapping[str, Any]) -> Config:
    _only(path, data, {"placement", "store", "controller", "proxy", "ssh", "services", "jobs"}, "")
    try:
        placement = Placement(data.get("placement", Placement.HUB.value))
    except ValueError:
        raise ConfigError(path, "must be 'hub' or 'login-node'", field="placement") from None
    store = _store(path, _table(path, data, "store"))
    controller = _settings(path, _table(path, data, "controller"), ControllerSettings, "controller")
    proxy_table = _table(path, data, "proxy")
    proxy, listen = _proxy(path, proxy_table), _listen(path, proxy_table)
    ssh = _ssh(path, _table(path, data, "ssh")) if "ssh" in data else None
    if placement is Placement.HUB and ssh is None:
        raise ConfigError(path, "hub placement needs an [ssh] table", field="ssh")
    if placement is Placement.HUB and controller.entrypoint_state_dir:
        message = "only in login-node placement, where the entrypoint's state_dir is"
        raise ConfigError(path, message, field="controller.entrypoint_state_dir")
    raw_services = data.get("services", [])
    if not isinstance(raw_services, list):
        raise ConfigError(path, "'services' must be an array of tables ([[services]])")
    services = services_from(path, raw_services)
    jobs = _jobs(path, _table(path, data, "jobs"))
    if placement is Placement.HUB and jobs:
        message = "only in login-node placement: in hub placement, entrypoint.toml's [services]"
        raise ConfigError(path, message, field="jobs")
    return Config(
        path=path,
        store=store,
        controller=controller,
        services=services,
        placement=placement,
        ssh=ssh,
        proxy=proxy,
        listen=listen,
        jobs=jobs,
    )


def _jobs(path: Path, data: Mapping[str, Any]) -> dict[str, JobSettings]:
    """[jobs.<service id>]: the same keys, read by the same parser, as the login node's."""
    jobs: dict[str, JobSettings] = {}
    for service, table in data.items():
        where = f"jobs.{service}"
        if not SERVICE_ID.fullmatch(service):
            raise ConfigError(path, "service ids are 1-128 of [A-Za-z0-9._-]", field=where)
        if not isinstance(table, dict):
            raise ConfigError(path, "must be a table", field=where)
        _only(path, table, set(job_settings.KEYS), where)
        try:
            jobs[service] = job_settings.parse(table)
        except JobSettingsError as error:
            raise ConfigError(path, error.message, field=f"{where}.{error.field}") from None
    return jobs


def _ssh(path: Path, data: Mapping[str, Any]) -> SshSettings:
    _only(
        path,
        data,
        {"host", "port", "user", "key_file", "known_hosts_file", "keepalive_interval",
         "ssh_config", "jump_host"},
        "ssh",
    )  # fmt: skip
    for required in ("host", "known_hosts_file"):
        if required not in data:
            raise ConfigError(path, "missing", field=f"ssh.{required}")
    host = _str(path, data, "host", "", "ssh")
    ssh_config, options = _ssh_config(path, data, host)
    # As with ssh, what ssh_config says for the host fills in what this table leaves out.
    for required, option in (("user", "User"), ("key_file", "IdentityFile")):
        if required not in data and option.lower() not in options:
            where = f", and {ssh_config} has no {option} for Host {host}" if ssh_config else ""
            raise ConfigError(path, f"missing{where}", field=f"ssh.{required}")
    port = _port(path, data, 22, "ssh") if "port" in data or ssh_config is None else None
    interval = data.get("keepalive_interval", 15.0)
    if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
        raise ConfigError(path, "must be a positive number", field="ssh.keepalive_interval")
    jump_host = _str(path, data, "jump_host", "", "ssh")
    if "jump_host" in data and not jump_host.strip():
        raise ConfigError(path, "must be [user@]host[:port], not empty", field="ssh.jump_host")
    key_file = _str(path, data, "key_file", "", "ssh")
    return SshSettings(
        host=host,
        user=_str(path, data, "user", "", "ssh") or None,
        key_file=_relative_to(path, key_file) if key_file else None,
        known_hosts_file=_relative_to(path, _str(path, data, "known_hosts_file", "", "ssh")),
        port=port,
        keepalive_interval=float(interval),
        ssh_config=ssh_config,
        jump_host=jump_host,
    )


def _ssh_config(
    path: Path, data: Mapping[str, Any], host: str
) -> tuple[Path | None, Mapping[str, Any]]:
    """The ssh_config file, if set, and what it says for ``host``; read now to fail early."""
    if "ssh_config" not in data:
        return None, {}
    file = _relative_to(path, _str(path, data, "ssh_config", "", "ssh"))
    try:
        options = paramiko.SSHConfig.from_path(file).lookup(host)
    except OSError as error:
        raise ConfigError(
            path, f"cannot read {file}: {error.strerror}", field="ssh.ssh_config"
        ) from None
    except paramiko.SSHException as error:
        raise ConfigError(path, f"{file}: {error}", field="ssh.ssh_config") from None
    if "proxycommand" in options:
        # Its ssh would check the next host's key against its own known_hosts.
        raise ConfigError(
            path,
            f"{file} gives Host {host} a ProxyCommand, which saia does not run: use ProxyJump",
            field="ssh.ssh_config",
        )
    return file, options


def services_from(path: Path | str, raw: list[Any]) -> tuple[ServiceSpec, ...]:
    specs: list[ServiceSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ConfigError(path, f"services[{index}] is not a table")
        try:
            spec = ServiceSpec.from_dict(entry)
        except InvalidSpec as error:
            raise ConfigError(path, error.message, error.service, error.field) from None
        if spec.id in seen:
            raise ConfigError(path, "listed twice", spec.id, "id")
        seen.add(spec.id)
        specs.append(spec)
    try:
        check_names(specs)
    except InvalidSpec as error:
        raise ConfigError(path, error.message, error.service, error.field) from None
    return tuple(specs)


def _store(path: Path, data: Mapping[str, Any]) -> StoreSettings:
    backend = data.get("backend", "sqlite")
    if backend == "sqlite":
        _only(path, data, {"backend", "path"}, "store")
        db = _relative_to(path, _str(path, data, "path", "saia.db", "store"))
        return SqliteStore(str(db))
    if backend == "postgres":
        _only(path, data, {"backend", "dbname", "host", "port", "user", "password"}, "store")
        port = _port(path, data, 5432, "store")
        return PostgresStore(
            dbname=_str(path, data, "dbname", "saia", "store"),
            host=_str(path, data, "host", "127.0.0.1", "store"),
            port=port,
            user=_str(path, data, "user", "saia", "store"),
            password=_str(path, data, "password", "", "store"),
        )
    message = f"unknown backend {backend!r} (sqlite or postgres)"
    raise ConfigError(path, message, field="store.backend")


def _listen(path: Path, data: Mapping[str, Any]) -> Listen:
    defaults = Listen()
    port = _port(path, data, defaults.port, "proxy")
    return Listen(host=_str(path, data, "host", defaults.host, "proxy"), port=port)


MAX_HEAD_BYTES = 48 * 1024
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")  # an HTTP field name (a token)
# Headers with the user's groups: the gateway that names the user names them too.
GROUP_HEADERS = ("trusted_org_header", "trusted_unit_header", "trusted_groups_header",
                 "trusted_portal_header")  # fmt: skip


def _proxy(path: Path, data: Mapping[str, Any]) -> ProxySettings:
    knobs = {key: value for key, value in data.items() if key not in LISTEN_KEYS}
    settings = _settings(path, knobs, ProxySettings, "proxy")
    for name in ("max_body_bytes", "connect_attempts"):
        if getattr(settings, name) < 1:
            raise ConfigError(path, "must be at least 1", field=f"proxy.{name}")
    if not 1024 <= settings.max_head_bytes <= MAX_HEAD_BYTES:
        # The login node's session refuses larger header lists, and with them the session.
        message = f"must be from 1024 to {MAX_HEAD_BYTES}"
        raise ConfigError(path, message, field="proxy.max_head_bytes")
    _trusted_headers(path, settings)
    return settings


def _trusted_headers(path: Path, settings: ProxySettings) -> None:
    """Header names that can match, and groups only from the gateway that names the user."""
    for name in ("trusted_user_header", *GROUP_HEADERS):
        header = getattr(settings, name)
        if header and not HEADER_NAME.fullmatch(header):
            raise ConfigError(path, f"{header!r} is not a header name", field=f"proxy.{name}")
    gateway = bool(settings.trusted_user_header) and not settings.require_api_key
    for name in GROUP_HEADERS:
        if getattr(settings, name) and not gateway:
            # With keys, clients reach saia directly and could send any header.
            message = ("needs trusted_user_header and require_api_key = false: only the gateway "
                       "that names the user is trusted to name the user's groups")  # fmt: skip
            raise ConfigError(path, message, field=f"proxy.{name}")
    if settings.trusted_groups_header and (settings.trusted_org_header
                                           or settings.trusted_unit_header):  # fmt: skip
        message = ("organisation and unit come from the consumer groups or from headers of "
                   "their own, not both")  # fmt: skip
        raise ConfigError(path, message, field="proxy.trusted_groups_header")


S = TypeVar("S", ControllerSettings, ProxySettings)


def _settings(path: Path, data: Mapping[str, Any], kind: type[S], table: str) -> S:
    """A settings dataclass from a table: each value checked against its default's type."""
    defaults = kind()
    names = {f.name for f in fields(kind)}
    _only(path, data, names, table)
    values: dict[str, Any] = {}
    for name, value in data.items():
        values[name] = _setting(path, value, getattr(defaults, name), f"{table}.{name}")
    return kind(**values)


def _setting(path: Path, value: Any, default: Any, where: str) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(path, "must be true or false", field=where)
    elif isinstance(default, float):
        if not number or value <= 0:
            raise ConfigError(path, "must be a positive number", field=where)
        value = float(value)
    elif isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(path, "must be a whole number, 0 or more", field=where)
    elif isinstance(default, UnknownJobPolicy):
        try:
            value = UnknownJobPolicy(value)
        except ValueError:
            raise ConfigError(path, "must be 'adopt' or 'cancel'", field=where) from None
    elif isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(path, "must be a list of strings", field=where)
        value = tuple(value)
    elif not isinstance(value, str):
        raise ConfigError(path, "must be a string", field=where)
    return value


def _table(path: Path, data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(path, f"[{name}] must be a table")
    return value


def _only(path: Path, data: Mapping[str, Any], allowed: set[str], table: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{table}.{key}" if table else key
            raise ConfigError(path, "unknown setting", field=where)


def _port(path: Path, data: Mapping[str, Any], default: int, table: str) -> int:
    port = data.get("port", default)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(path, "must be a port number", field=f"{table}.port")
    return port


def _str(path: Path, data: Mapping[str, Any], key: str, default: str, table: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(path, "must be a string", field=f"{table}.{key}")
    return value


def _relative_to(config_path: Path, value: str) -> Path:
    """Relative paths in the file are relative to the file, not to the working directory."""
    candidate = Path(value)
    return candidate if candidate.is_absolute() else config_path.parent / candidate
