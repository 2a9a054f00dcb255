"""The ``simulate`` command: the log of ``--config`` (before the command) replayed under the
services of the ``--config`` given after it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saia import config
from saia.adapters.store import EventLog
from saia.replay import output
from saia.replay.progress import progress
from saia.replay.simulate import simulate
from saia.replay.source import recorded

COLUMNS = (
    "service",
    "requests",
    "recorded_jobs_started",
    "jobs_started",
    "job_hours",
    "waited",
    "wait_total_s",
    "wait_longest_s",
)


def add_command(commands: Any) -> None:
    what_if = commands.add_parser("simulate", help="recorded demand under other settings")
    # Its own dest: the log's --config comes before the command, the other one after it.
    what_if.add_argument(
        "--config",
        dest="other_config",
        type=Path,
        required=True,
        help="saia.toml whose services and controller interval to simulate",
    )
    what_if.add_argument("--json", action="store_true")
    what_if.set_defaults(run=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    other = config.load(args.other_config)
    log = EventLog(config.load(args.config).store)
    with progress("simulate", log.last_position()) as on_batch:
        events = (r.event for r in recorded(log, on_batch=on_batch))
        outcomes = simulate(events, other.services, other.controller.interval)
    rows = [
        (
            o.service,
            o.requests,
            o.recorded_jobs_started,
            o.jobs_started,
            o.job_hours,
            o.waited.requests,
            o.waited.total_seconds,
            o.waited.longest_seconds,
        )
        for o in outcomes
    ]
    if args.json:
        output.json_lines(dict(zip(COLUMNS, row, strict=True)) for row in rows)
    else:
        output.table(f"simulated with {args.other_config}", COLUMNS, rows)
    return 0
