"""The ``saia`` command line: thin wrappers over the application services."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from rich.console import Console
from rich.table import Table

from saia import bootstrap, catalog, config, saia_import, settings
from saia.adapters.store import EventLog
from saia.controller import describe, run
from saia.domain.errors import DomainError
from saia.domain.spec import ServiceSpec
from saia.hub import Hub
from saia.proxy import key_commands
from saia.serve import Serving
from saia.status import report

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def starter(sbatch_dir: str = "sbatch") -> str:
    """The configuration ``saia init`` writes when there is none."""
    return f"""\
# saia configuration. Relative paths are relative to this file.

placement = "hub"       # the controller reaches Slurm through saia-entrypoint over SSH;
                        # "login-node": it runs Slurm's commands on this host

[ssh]                   # the login node's forced-command key (see the README)
host = "login.example.org"
port = 22
user = "saia"
key_file = "hub_key"
known_hosts_file = "known_hosts"

[store]
backend = "sqlite"      # or "postgres" (dbname, host, port, user, password)
path = "saia.db"

[controller]
interval = 5            # seconds between controller passes
unknown_jobs = "cancel" # what to do with a saia job in the queue the log does not know
sbatch_dir = {_toml_value(sbatch_dir)}

[proxy]                 # saia serve: the OpenAI-compatible API
host = "127.0.0.1"      # put TLS (a gateway or reverse proxy) in front of it
port = 8000
require_api_key = true  # keys from `saia keys issue USER`; or, behind a gateway that
                        # authenticates, false and trusted_user_header = "x-consumer-username"
"""


def main(argv: Sequence[str] | None = None) -> int:
    env = settings.from_environment()
    parser = _parser(env.config)
    args = parser.parse_args(argv)
    logging.basicConfig(level=env.log_level, format=LOG_FORMAT)
    for chatty in ("httpx", "paramiko"):  # a line per probe or per connection is noise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        result: int = args.run(args)
    except (config.ConfigError, DomainError) as error:
        print(f"saia: {error}", file=sys.stderr)
        return 2
    return result


def _parser(default_config: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saia", description=__doc__)
    parser.add_argument("--config", type=Path, default=default_config, help="saia.toml")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create the config if missing; register its services")
    init.add_argument("--from-saia", type=Path, help="import services from a SAIA config.json")
    init.add_argument("--prune", action="store_true", help="retire services not in the file")
    init.set_defaults(run=_init)

    status = commands.add_parser("status", help="services and their jobs")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status)

    tick = commands.add_parser("tick", help="one controller pass: observe, plan, act")
    tick.set_defaults(run=_tick)
    controller = commands.add_parser("controller", help="run controller passes until stopped")
    controller.set_defaults(run=_controller)
    serve = commands.add_parser("serve", help="the OpenAI-compatible API and the controller")
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="issue, revoke or list API keys")
    key_verbs = keys.add_subparsers(required=True, metavar="VERB")
    issue = key_verbs.add_parser("issue", help="a new key for USER, printed once")
    issue.add_argument("user")
    issue.add_argument("--label", default="", help="what the key is for")
    issue.set_defaults(run=_keys_issue)
    revoke = key_verbs.add_parser("revoke", help="revoke a key by its id (see 'keys list')")
    revoke.add_argument("key_id")
    revoke.add_argument("--reason", default="revoked by an operator")
    revoke.set_defaults(run=_keys_revoke)
    listing = key_verbs.add_parser("list", help="the keys, without their secrets")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_keys_list)

    service = commands.add_parser("service", help="add, edit or remove a service")
    verbs = service.add_subparsers(required=True, metavar="VERB")
    add = verbs.add_parser("add", help="add a service: ID sbatch=SCRIPT [field=value ...]")
    add.add_argument("id")
    add.add_argument("fields", nargs="*", metavar="field=value")
    add.set_defaults(run=_service_add)
    edit = verbs.add_parser("edit", help="change fields of a service")
    edit.add_argument("id")
    edit.add_argument("fields", nargs="+", metavar="field=value")
    edit.set_defaults(run=_service_edit)
    remove = verbs.add_parser("remove", help="retire a service (its jobs drain and end)")
    remove.add_argument("id")
    remove.set_defaults(run=_service_remove)
    return parser


def _open(args: argparse.Namespace) -> tuple[config.Config, Hub]:
    cfg = config.load(args.config)
    hub = Hub(cfg.store)
    hub.refresh()
    return cfg, hub


def _init(args: argparse.Namespace) -> int:
    path: Path = args.config
    imported = saia_import.read(args.from_saia) if args.from_saia else None
    if not path.exists():
        path.write_text(_starter_for(path, imported))
        print(f"wrote {path}")
    cfg = config.load(path)
    specs = {spec.id: spec for spec in cfg.services}
    if imported is not None:
        # Not silent: what the import left out or assumed, and what the operator must do.
        for note in (*imported.notes, *saia_import.placement_notes(cfg, imported)):
            print(f"saia: note: {note}", file=sys.stderr)
        for spec in imported.services:
            specs.setdefault(spec.id, spec)
    hub = Hub(cfg.store)
    try:
        hub.refresh()
        for change in catalog.sync(hub, specs.values(), time.time(), prune=args.prune):
            detail = f" ({', '.join(change.fields)})" if change.fields else ""
            print(f"{change.what} {change.service}{detail}")
    finally:
        hub.close()
    return 0


def _starter_for(path: Path, imported: saia_import.Imported | None) -> str:
    """The starter configuration, with the imported services and their scripts' folder."""
    if imported is None:
        return starter()
    folder = imported.script_folder()
    sbatch_dir = "sbatch" if folder is None else saia_import.folder_setting(path, folder)
    return starter(sbatch_dir) + "".join(_service_toml(spec) for spec in imported.services)


def _status(args: argparse.Namespace) -> int:
    _, hub = _open(args)
    try:
        rows = report(hub.state)
    finally:
        hub.close()
    if args.json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    table = Table("service", "aliases", "status", "min-max", "in flight", "jobs")
    for row in rows:
        jobs = ", ".join(
            f"{job['slurm_job_id'] or '-'}:{job['phase']}@{job['node'] or '?'}:{job['port']}"
            + (f" (draining: {job['draining']})" if job["draining"] else "")
            for job in row["jobs"]
        )
        table.add_row(
            row["service"],
            ", ".join(row["aliases"]) or "-",
            row["status"],
            f"{row['minimum']}-{row['maximum']}",
            str(row["inflight"]),
            jobs or "-",
        )
    Console().print(table)
    return 0


def _tick(args: argparse.Namespace) -> int:
    cfg, hub = _open(args)
    try:
        controller = bootstrap.controller_for(cfg, hub)
        with bootstrap.controller_lock(cfg):
            report = controller.tick()
    finally:
        hub.close()
    for line in describe(report):
        print(line)
    for error in report.errors:
        print(f"saia: {error}", file=sys.stderr)
    return 1 if report.errors else 0


def _controller(args: argparse.Namespace) -> int:
    cfg, hub = _open(args)
    stop = threading.Event()
    controller = bootstrap.controller_for(cfg, hub)

    def request_stop(signum: int, frame: object) -> None:
        stop.set()
        controller.wake()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        run(controller, bootstrap.controller_lock(cfg), stop)
        hub.checkpoint()  # the next start applies nothing
    finally:
        hub.close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    return Serving(config.load(args.config)).run()


def _key_log(args: argparse.Namespace) -> EventLog:
    """Only the log: keys need none of the Hub's projections."""
    return EventLog(config.load(args.config).store)


def _keys_issue(args: argparse.Namespace) -> int:
    log = _key_log(args)
    try:
        key_id, key = key_commands.issue(log, args.user, args.label, time.time())
    finally:
        log.close()
    print(f"issued key {key_id} for {args.user}; it is shown this once:", file=sys.stderr)
    print(key)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    try:
        key_id = UUID(args.key_id)
    except ValueError:
        raise config.ConfigError("command line", f"not a key id: {args.key_id!r}") from None
    log = _key_log(args)
    try:
        key_commands.revoke(log, key_id, args.reason, time.time())
    except key_commands.KeyNotFound as error:
        print(f"saia: {error}", file=sys.stderr)
        return 1
    finally:
        log.close()
    print(f"revoked key {key_id}")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    log = _key_log(args)
    try:
        keys = key_commands.listing(log)
    finally:
        log.close()
    if args.json:
        rows = [
            {"id": str(view.id), "user": view.user, "label": view.label,
             "issued_at": view.issued_at, "revoked": view.revoked}
            for view in keys
        ]  # fmt: skip
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    table = Table("id", "user", "label", "issued (UTC)", "revoked")
    for view in keys:
        issued = time.strftime("%Y-%m-%d %H:%M", time.gmtime(view.issued_at))
        table.add_row(str(view.id), view.user, view.label, issued,
                      "yes" if view.revoked else "")  # fmt: skip
    Console().print(table)
    return 0


def _service_add(args: argparse.Namespace) -> int:
    fields = {"id": args.id, **_fields(args.fields)}
    specs = config.services_from("command line", [fields])
    _, hub = _open(args)
    try:
        change = catalog.add(hub, specs[0], time.time())
    finally:
        hub.close()
    print(f"{change.what} {change.service}")
    return 0


def _service_edit(args: argparse.Namespace) -> int:
    _, hub = _open(args)
    try:
        view = hub.state.services.get(args.id)
        if view is not None:
            try:
                view.spec.changed(_fields(args.fields))
            except DomainError as error:
                raise config.ConfigError("command line", str(error)) from None
        change = catalog.edit(hub, args.id, _fields(args.fields), time.time())
    finally:
        hub.close()
    print(f"{change.what} {change.service}" if change else f"{args.id}: nothing changed")
    return 0


def _service_remove(args: argparse.Namespace) -> int:
    _, hub = _open(args)
    try:
        change = catalog.retire(hub, args.id, time.time())
    finally:
        hub.close()
    print(f"{change.what} {change.service}")
    return 0


def _fields(pairs: Sequence[str]) -> dict[str, Any]:
    """field=value pairs; values are read as TOML (numbers, lists), else taken as text."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise config.ConfigError("command line", f"expected field=value, got {pair!r}")
        try:
            fields[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            fields[key] = raw
    return fields


def _service_toml(spec: ServiceSpec) -> str:
    lines = ["", "[[services]]"]
    for key, value in spec.to_dict().items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
