"""The verbs that speak HTTP to a saia job: probe, forward, and the legacy request.

Only saia's own running jobs are reached, at the batch host and port the queue
gives for them; the client names a job, never a host or a port. Which jobs
those are comes from the route cache (saia.entrypoint.routes).
"""

from __future__ import annotations

import json
import random

from saia.entrypoint import exits, grammar, legacy, relay
from saia.entrypoint.config import EntrypointConfig
from saia.entrypoint.context import Context, Read, Refusal
from saia.entrypoint.routes import Route

HttpCommand = grammar.Probe | grammar.Forward | grammar.Legacy


def run(command: HttpCommand, context: Context) -> int:
    match command:
        case grammar.Probe():
            code = probe(command, context)
        case grammar.Forward():
            code = forward(command, context)
        case grammar.Legacy():
            code = legacy_request(command, context)
    return code


def probe(command: grammar.Probe, context: Context) -> int:
    """The same check as the hub's own prober (HttpProber): ok means a 2xx answer."""
    route = running_route(command.job_id, context)
    # httpx costs about 0.1 s to import; forward and legacy requests must not pay it.
    from uuid import UUID  # noqa: PLC0415 (start-up cost)

    from saia.adapters.prober import HttpProber  # noqa: PLC0415 (start-up cost)
    from saia.ports import ProbeTarget  # noqa: PLC0415 (start-up cost)

    target = ProbeTarget(
        job=UUID(int=int(command.job_id)), host=route.host, port=route.port, path=command.path
    )
    prober = HttpProber(max_concurrency=1)
    result = prober.probe([target], context.config.probe_timeout)[target.job]
    record = {"ok": result.ok, "latency": result.latency, "error": result.error}
    context.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    return exits.OK


def forward(command: grammar.Forward, context: Context) -> int:
    route = running_route(command.job_id, context)
    config = context.config
    try:
        relay.forward(
            context.read,
            context.write,
            route.host,
            route.port,
            _timeouts(config),
            config.max_body_bytes,
        )
    except relay.BadRequest as error:
        raise Refusal(str(error), exits.BAD_DATA) from None
    except relay.BackendError as error:
        raise Refusal(f"job {route.job_id}: {error}", exits.UNAVAILABLE) from None
    return exits.OK


def legacy_request(command: grammar.Legacy, context: Context) -> int:
    """Answer as cloud_interface.sh did: always with an HTTP response on stdout."""
    now = context.clock()
    try:
        request = legacy.parse_request(command.text)
    except legacy.LegacyRefused as refused:
        return _answer(context, refused.answer, now, exits.BAD_DATA)
    if request.service not in context.config.services:
        return _answer(context, legacy.UNKNOWN_SERVICE, now, exits.NOT_PERMITTED)
    backends = context.routes().running(request.service)
    if not backends:
        return _answer(context, legacy.NO_BACKEND, now, exits.UNAVAILABLE)
    body = request.inline_body
    if request.body_on_stdin:
        body = _read_all(context.read, context.config.max_body_bytes)
        if body is None:
            return _answer(context, legacy.BODY_TOO_LARGE, now, exits.BAD_DATA)
    return _relay_to_one(request, body, backends, context, now)


def _relay_to_one(
    request: legacy.LegacyRequest,
    body: bytes | None,
    backends: list[Route],
    context: Context,
    now: float,
) -> int:
    # Spread requests over the running jobs, as the original's random pick did; a job
    # that does not accept connections yet is passed over for the next one.
    random.SystemRandom().shuffle(backends)
    timeouts = _timeouts(context.config)
    for backend in backends:
        try:
            relay.relay_legacy(request, body, context.write, backend.host, backend.port, timeouts)
        except relay.BackendUnreachable:
            continue
        except relay.BackendError as error:
            if not error.answered:
                return _answer(context, legacy.BACKEND_BROKE, now, exits.UNAVAILABLE)
            raise Refusal(f"job {backend.job_id}: {error}", exits.UNAVAILABLE) from None
        return exits.OK
    return _answer(context, legacy.NO_BACKEND, now, exits.UNAVAILABLE)


def _answer(context: Context, answer: legacy.Answer, now: float, exit_code: int) -> int:
    context.write(legacy.render(answer, now))
    return exit_code


def _read_all(read: Read, limit: int) -> bytes | None:
    """All of stdin, or None if it holds more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := read():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def running_route(job_id: str, context: Context) -> Route:
    route = context.routes().route(job_id)
    if route is None:
        raise Refusal(f"job {job_id} is not one of saia's jobs", exits.NOT_PERMITTED)
    if not route.running:
        raise Refusal(f"job {job_id} is not running ({route.state})", exits.NOT_PERMITTED)
    return route


def _timeouts(config: EntrypointConfig) -> relay.Timeouts:
    return relay.Timeouts(connect=config.connect_timeout, idle=config.idle_timeout)
