"""What the hub may do to the Slurm queue: list saia's jobs, submit one, cancel one.

Each refusal is decided before Slurm is changed: a service must be configured
on this login node, a port must be in its range and free, a job must be listed
under saia's name and comment for this user. Cancel always looks at the queue
afresh; it is the one operation that destroys.
"""

from __future__ import annotations

import json
import os

from saia.entrypoint.config import EntrypointConfig
from saia.entrypoint.context import Context
from saia.entrypoint.flock import flock
from saia.entrypoint.refusal import Refusal
from saia.protocol import exits
from saia.protocol.jobs import JobRecord, job_line


def jobs(context: Context) -> bytes:
    listed = context.slurm().jobs()
    context.routes().store(listed)  # a free refresh for the requests that follow
    return b"".join(job_line(job) for job in listed)


def status(context: Context) -> bytes:
    """One JSON line, as the original's ``status`` printed its services file on one line."""
    config = context.config
    by_service: dict[str, list[dict[str, object]]] = {}
    for job in context.routes().refresh().values():
        row = {"job_id": job.job_id, "state": job.state, "host": job.batch_host, "port": job.port}
        by_service.setdefault(job.service, []).append(row)
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
    return json.dumps(report, separators=(",", ":")).encode() + b"\n"


def submit(context: Context, service: str, port: int, token: str) -> bytes:
    config = context.config
    rule = config.services.get(service)
    if rule is None:
        raise Refusal(f"service {service!r} is not configured here", exits.NOT_PERMITTED)
    if not config.allows_port(port):
        span = f"{config.port_min}-{config.port_max}"
        raise Refusal(f"port {port} is outside {span}", exits.NOT_PERMITTED)
    try:
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
        # Under a lock, so that two submits of one token cannot both miss each other's job.
        with flock(config.submit_lock, config.slurm_timeout) as held:
            if not held:
                raise Refusal("another submission holds the lock; try again", exits.TEMPORARY)
            job_id = _submit_once(context, service, port, token)
    except OSError as error:
        raise Refusal(f"state_dir {config.state_dir}: {error.strerror}", exits.CONFIG) from None
    context.routes().forget()
    return f"{job_id}\n".encode()


def _submit_once(context: Context, service: str, port: int, token: str) -> str:
    queue = context.slurm().jobs()
    for job in queue:
        if job.token == token:
            return _resubmitted(job, service, port, token)
    for job in queue:
        if job.port == port and not job.ended:
            raise Refusal(f"port {port} belongs to saia job {job.job_id}", exits.NOT_PERMITTED)
    return context.slurm().submit(context.config.services[service], port, token)


def _resubmitted(job: JobRecord, service: str, port: int, token: str) -> str:
    # The hub retries a submit whose answer it lost (a cut link): the token makes the
    # retry find the first job instead of starting a second one.
    if job.service != service or job.port != port:
        message = f"token {token} already belongs to saia job {job.job_id}"
        raise Refusal(message, exits.NOT_PERMITTED)
    return job.job_id


def cancel(context: Context, job_id: str) -> bytes:
    if not any(job.job_id == job_id for job in context.slurm().jobs()):
        raise Refusal(f"job {job_id} is not one of saia's jobs", exits.NOT_PERMITTED)
    context.slurm().cancel(job_id)
    context.routes().forget()
    return b""


def running_job(context: Context, job_id: str) -> JobRecord:
    """saia's job ``job_id`` if it runs, by the route cache; refused otherwise."""
    job = context.routes().route(job_id)
    if job is None:
        raise Refusal(f"job {job_id} is not one of saia's jobs", exits.NOT_PERMITTED)
    if not job.running:
        raise Refusal(f"job {job_id} is not running ({job.state})", exits.NOT_PERMITTED)
    if job.service not in context.config.services:
        raise Refusal(f"job {job_id} is of a service not allowed here", exits.NOT_PERMITTED)
    if not context.config.allows_port(job.port):
        raise Refusal(f"job {job_id} listens outside the allowed ports", exits.NOT_PERMITTED)
    return job


def allowed(config: EntrypointConfig, job: JobRecord) -> bool:
    """Whether this login node would have started ``job``: a job of a service it no longer
    allows, or on a port outside its range, is not reached (whoever named it so)."""
    return job.service in config.services and config.allows_port(job.port)
