"""The ``saia-replay`` command line: reads the log named by ``--config``, never writes it.

``accounting`` brings the accounting tables up to the log before it reads them, and
``rebuild`` replaces projections: both write projections, which are the log's to derive.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from saia import config, settings
from saia.adapters.projection_db import ProjectionDb
from saia.adapters.store import EventLog
from saia.domain.errors import DomainError
from saia.projections.accounting import Accounting
from saia.projections.runner import ProjectionRunner
from saia.replay import output, simulate_cli, verify_cli
from saia.replay.at_time import state_at
from saia.replay.checkpoints import KeyFileError
from saia.replay.events import as_dict, fields_text
from saia.replay.progress import progress
from saia.replay.reports import Grouping, columns_and_values, report
from saia.replay.selection import Selection
from saia.replay.source import recorded
from saia.replay.timeline import timeline


class UsageError(Exception):
    """A bad argument value: reported like a configuration error (exit 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser(settings.from_environment().config)
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except (config.ConfigError, DomainError, UsageError, KeyFileError) as error:
        print(f"saia-replay: {error}", file=sys.stderr)
        return 2
    return result


def moment(text: str) -> datetime:
    """An ISO-8601 time; without a zone it is UTC, like every time in the log."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def open_log(args: argparse.Namespace) -> EventLog:
    return EventLog(config.load(args.config).store)


def _parser(default_config: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saia-replay", description=__doc__)
    parser.add_argument("--config", type=Path, default=default_config, help="saia.toml")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    log = commands.add_parser("log", help="events, filtered")
    log.add_argument("--service", default="")
    log.add_argument("--job", default="", help="job id or token")
    log.add_argument("--user", default="")
    log.add_argument("--since", type=moment)
    log.add_argument("--until", type=moment)
    log.add_argument("--json", action="store_true", help="JSON lines")
    log.set_defaults(run=_log)

    state = commands.add_parser("state", help="services and jobs as they were at a moment")
    state.add_argument("--at", type=moment, required=True)
    state.add_argument("--json", action="store_true")
    state.set_defaults(run=_state)

    life = commands.add_parser("timeline", help="one job's events with durations")
    life.add_argument("job", help="job id or token")
    life.add_argument("--json", action="store_true")
    life.set_defaults(run=_timeline)

    usage = commands.add_parser(
        "accounting", help="usage by user, service, day, month, hour, org, unit or portal"
    )
    usage.add_argument("--by", type=Grouping, choices=list(Grouping), default=Grouping.USER)
    usage.add_argument("--since", type=moment, help="from this day (hour, with --by hour) on")
    usage.add_argument("--until", type=moment, help="up to this day (hour) included")
    usage.add_argument("--format", choices=("table", "csv", "json"), default="table")
    usage.set_defaults(run=_accounting)

    simulate_cli.add_command(commands)
    verify_cli.add_commands(commands)
    return parser


def _log(args: argparse.Namespace) -> int:
    log = open_log(args)
    selection = Selection(args.service, args.job, args.user, args.since, args.until)
    with progress("log", log.last_position()) as on_batch:
        rows = (
            as_dict(r.position, r.event)
            for r in recorded(log, on_batch=on_batch)
            if selection.accepts(r.event)
        )
        if args.json:
            output.json_lines(rows)
        else:
            output.table(
                "events",
                ("position", "at", "kind", "originator", "fields"),
                (
                    (
                        row["position"],
                        row["at"],
                        row["kind"],
                        row["originator"],
                        fields_text(row["fields"]),
                    )
                    for row in rows
                ),
            )
    return 0


def _state(args: argparse.Namespace) -> int:
    log = open_log(args)
    with progress("state", log.last_position()) as on_batch:
        state = state_at(log, args.at, on_batch)
    services = [
        {
            "service": name,
            "retired": view.retired,
            "inflight": view.inflight,
            "jobs": [
                {
                    "id": str(job.id),
                    "token": job.token,
                    "phase": job.phase.value,
                    "port": job.port,
                    "node": job.node,
                    "draining": job.draining,
                }
                for job in view.jobs.values()
            ],
        }
        for name, view in sorted(state.services.items())
    ]
    if args.json:
        output.json_lines(services)
        return 0
    output.table(
        f"state at {args.at.isoformat()}",
        ("service", "retired", "in flight", "job", "phase", "port", "node", "draining"),
        _state_rows(services),
    )
    return 0


def _state_rows(services: list[dict[str, object]]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for service in services:
        jobs = service["jobs"]
        assert isinstance(jobs, list)
        head = (service["service"], service["retired"], service["inflight"])
        if not jobs:
            rows.append((*head, "", "", "", "", ""))
        for job in jobs:
            rows.append(
                (*head, job["token"], job["phase"], job["port"], job["node"], job["draining"])
            )
    return rows


def _timeline(args: argparse.Namespace) -> int:
    log = open_log(args)
    with progress("timeline", log.last_position()) as on_batch:
        steps = timeline(log, args.job, on_batch)
    if not steps:
        raise UsageError(f"no events for job {args.job!r}")
    rows = [{**asdict(step), "at": step.at.isoformat()} for step in steps]
    if args.json:
        output.json_lines(rows)
    else:
        output.table(
            f"job {args.job}",
            ("position", "at", "kind", "+s", "since request", "fields"),
            (
                (
                    r["position"],
                    r["at"],
                    r["kind"],
                    r["since_previous"],
                    r["since_request"],
                    fields_text(r["fields"]),
                )
                for r in rows
            ),
        )
    return 0


def _accounting(args: argparse.Namespace) -> int:
    log = open_log(args)
    db = ProjectionDb.beside(log)
    accounting = Accounting()
    try:
        runner = ProjectionRunner(log, db, [accounting])
        runner.load()
        start = runner.position
        with progress("accounting", log.last_position() - start) as on_batch:
            runner.catch_up(lambda position: on_batch(position - start))
        rows = report(db, accounting, args.by, args.since, args.until)
    finally:
        db.close()
        log.close()
    columns, values = columns_and_values(rows, args.by)
    if args.format == "json":
        output.json_lines(dict(zip(columns, row, strict=True)) for row in values)
    elif args.format == "csv":
        output.csv_rows(columns, values)
    else:
        output.table(f"accounting by {args.by.value}", columns, values)
    return 0
