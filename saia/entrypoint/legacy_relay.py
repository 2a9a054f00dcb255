"""A legacy SAIA request, answered as cloud_interface.sh did: always an HTTP response on stdout.

The request is parsed by saia.entrypoint.legacy, sent to one of the service's
running jobs over saia.entrypoint.upstream, and the job's answer is written
as ``curl -i`` printed it for the original: status line and headers as
received, the body without chunked framing.

In login-node placement each request also counts as demand for the controller
(saia.protocol.demand), and a request that finds no running job starts a
controller pass at once (rate-limited as keep-alive's), so that a service at
zero instances starts on its first request, as with SAIA's own scheduler.
"""

from __future__ import annotations

import asyncio
import random

from saia.entrypoint import legacy, queue, upstream
from saia.entrypoint.context import Context, Read
from saia.entrypoint.placement import keep_alive
from saia.entrypoint.refusal import Refusal
from saia.protocol import demand, exits, job_secret
from saia.protocol.jobs import JobRecord


def answer(text: str, context: Context) -> int:
    """Answer the request in ``text``; the exit code says how it went."""
    now = context.clock()
    try:
        request = legacy.parse_request(text)
    except legacy.LegacyRefused as refused:
        return _answer(context, refused.answer, now, exits.BAD_DATA)
    config = context.config
    if request.service not in config.services:
        return _answer(context, legacy.UNKNOWN_SERVICE, now, exits.NOT_PERMITTED)
    if config.login_node is not None:
        try:
            demand.record(config.state_dir, request.service, now)
        except OSError as error:
            message = f"state_dir: cannot note demand: {error.strerror}"
            raise Refusal(message, exits.CONFIG) from None
    backends = [job for job in context.routes().running(request.service)
                if queue.allowed(config, job)]  # fmt: skip
    if not backends:
        if config.login_node is not None:
            keep_alive(config, now, context.environment)  # a pass now, to start one
        return _answer(context, legacy.NO_BACKEND, now, exits.UNAVAILABLE)
    body = request.inline_body
    if request.body_on_stdin:
        body = _read_all(context.read, config.max_body_bytes)
        if body is None:
            return _answer(context, legacy.BODY_TOO_LARGE, now, exits.BAD_DATA)
    return asyncio.run(_relay_to_one(request, body or b"", backends, context, now))


async def _relay_to_one(
    request: legacy.LegacyRequest, body: bytes, backends: list[JobRecord], context: Context,
    now: float,
) -> int:  # fmt: skip
    # Spread requests over the running jobs, as the original's random pick did; a job
    # that does not accept connections yet is passed over for the next one.
    random.SystemRandom().shuffle(backends)
    config = context.config
    pool = upstream.UpstreamPool(config.connect_timeout, config.idle_timeout)
    try:
        key = job_secret.load_key(config.state_dir)
    except OSError as error:
        raise Refusal(f"state_dir: {error}", exits.CONFIG) from None
    # The job's secret replaces whatever Authorization the hub sent (the user's own).
    headers = [(n.lower().encode(), v.encode()) for n, v in request.headers
               if n.lower() != "authorization"]  # fmt: skip
    try:
        for job in backends:
            try:
                response = await pool.request(
                    job.batch_host, job.port, request.method, request.path,
                    [*headers, _bearer(key, job.token)], body,
                )  # fmt: skip
            except upstream.UpstreamUnreachable:
                continue
            except upstream.UpstreamError:
                return _answer(context, legacy.BACKEND_BROKE, now, exits.UNAVAILABLE)
            context.write(legacy.render_head(
                response.http_version, response.status, response.reason, response.headers
            ))  # fmt: skip
            try:
                async for chunk in response.chunks():
                    context.write(chunk)
            except upstream.UpstreamError as error:
                raise Refusal(f"job {job.job_id}: {error}", exits.UNAVAILABLE) from None
            return exits.OK
    finally:
        await pool.aclose()
    return _answer(context, legacy.NO_BACKEND, now, exits.UNAVAILABLE)


def _bearer(key: bytes, token: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {job_secret.for_job(key, token)}".encode())


def _answer(context: Context, fixed: legacy.Answer, now: float, exit_code: int) -> int:
    context.write(legacy.render(fixed, now))
    return exit_code


def _read_all(read: Read, limit: int) -> bytes | None:
    """All of stdin, or None if it holds more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = read()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
