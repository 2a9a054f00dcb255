"""The verbs that read or change the Slurm queue: jobs, status, submit, cancel.

Each refusal is decided before Slurm is changed: a service must be configured
on this login node, a port must be in its range and free, a job must be listed
under saia's name and comment for this user. Cancel always looks at the queue
afresh; it is the one verb that destroys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from saia.adapters.lock import FileLock, LockTimeout
from saia.domain.slurm import SlurmJob
from saia.entrypoint import exits, grammar
from saia.entrypoint.context import Context, Refusal, route_of, slurm_errors
from saia.entrypoint.wire import job_line
from saia.ports import SubmitRequest

QueueCommand = grammar.Jobs | grammar.Status | grammar.Submit | grammar.Cancel


def run(command: QueueCommand, context: Context) -> int:
    match command:
        case grammar.Jobs():
            code = jobs(context)
        case grammar.Status():
            code = status(context)
        case grammar.Submit():
            code = submit(command, context)
        case grammar.Cancel():
            code = cancel(command, context)
    return code


def jobs(context: Context) -> int:
    listed = context.jobs()
    context.routes().store(route_of(job) for job in listed)  # a free refresh for forward
    for job in listed:
        context.write(job_line(job))
    return exits.OK


def status(context: Context) -> int:
    """One JSON line, as the original's ``status`` printed its services file on one line."""
    config = context.config
    by_service: dict[str, list[dict[str, object]]] = {}
    for route in context.routes().refresh().values():
        row = {"job_id": route.job_id, "state": route.state, "host": route.host, "port": route.port}
        by_service.setdefault(route.service, []).append(row)
    services = [
        {
            "id": rule.id,
            "sbatch": rule.sbatch,
            "time_limit": rule.time_limit,
            "jobs": by_service.pop(rule.id, []),
        }
        for rule in config.services.values()
    ]
    report = {
        "services": services,
        "unconfigured_jobs": [row for rows in by_service.values() for row in rows],
        "port_min": config.port_min,
        "port_max": config.port_max,
    }
    context.write(json.dumps(report, separators=(",", ":")).encode() + b"\n")
    return exits.OK


def submit(command: grammar.Submit, context: Context) -> int:
    config = context.config
    rule = config.services.get(command.service)
    if rule is None:
        raise Refusal(f"service {command.service!r} is not configured here", exits.NOT_PERMITTED)
    if not config.allows_port(command.port):
        span = f"{config.port_min}-{config.port_max}"
        raise Refusal(f"port {command.port} is outside {span}", exits.NOT_PERMITTED)
    # Under a lock, so that two submits of one token cannot both miss each other's job.
    lock = FileLock(Path(config.submit_lock), timeout=config.slurm_timeout)
    try:
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
        lock.acquire()
    except LockTimeout:
        raise Refusal("another submission holds the lock; try again", exits.TEMPORARY) from None
    except OSError as error:
        message = f"state_dir {config.state_dir}: {error.strerror}"
        raise Refusal(message, exits.CONFIG) from None
    try:
        queue = context.jobs()
        for job in queue:
            if job.token == command.token:
                return _resubmitted(command, job, context)
        for job in queue:
            if job.port == command.port and job.final is None:
                message = f"port {command.port} belongs to saia job {job.job_id}"
                raise Refusal(message, exits.NOT_PERMITTED)
        request = SubmitRequest(
            service=rule.id,
            sbatch=rule.sbatch,
            port=command.port,
            token=command.token,
            walltime=rule.time_limit * 60.0,
        )
        with slurm_errors():
            job_id = context.slurm().submit(request)
    finally:
        lock.release()
    context.routes().forget()
    context.write(f"{job_id}\n".encode())
    return exits.OK


def _resubmitted(command: grammar.Submit, job: SlurmJob, context: Context) -> int:
    # The hub retries a submit whose answer it lost (a cut link): the token makes the
    # retry find the first job instead of starting a second one.
    if job.service != command.service or job.port != command.port:
        message = f"token {command.token} already belongs to saia job {job.job_id}"
        raise Refusal(message, exits.NOT_PERMITTED)
    context.write(f"{job.job_id}\n".encode())
    return exits.OK


def cancel(command: grammar.Cancel, context: Context) -> int:
    if not any(job.job_id == command.job_id for job in context.jobs()):
        raise Refusal(f"job {command.job_id} is not one of saia's jobs", exits.NOT_PERMITTED)
    with slurm_errors():
        context.slurm().cancel(command.job_id)
    context.routes().forget()
    return exits.OK
