"""What each path of a session does (the paths are saia.protocol.session's).

Arguments are checked against saia.protocol.ids before anything runs, and the
checks of configured services, ports in range and saia's own (running) jobs
are saia.entrypoint.queue's. A refusal answers the stream with the status of
its exit code (saia.entrypoint.session_messages) and the session goes on.

Slurm's commands and the route cache file are synchronous: they run one at a
time on a worker thread of their own, so the event loop keeps serving other
streams meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import unquote

from saia.entrypoint import queue
from saia.entrypoint.context import Context
from saia.entrypoint.placement import keep_alive
from saia.entrypoint.refusal import Refusal
from saia.entrypoint.session_forward import Forwarder
from saia.entrypoint.session_messages import IncomingRequest, Reply, RequestFailed
from saia.entrypoint.upstream import UpstreamError
from saia.protocol import exits, ids
from saia.protocol import session as paths
from saia.protocol.jobs import JobRecord

Result = TypeVar("Result")
JSON = b"application/json"


class SessionActions:
    """Answers one stream's request; shared by all streams of a session."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.forwarder = Forwarder(context.config)
        self._queue_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saia-queue")

    async def respond(self, request: IncomingRequest) -> Reply:  # noqa: PLR0911 (one per path)
        path, _, query = request.path.partition("?")
        forwarded = paths.HTTP.fullmatch(request.path)
        if forwarded:
            return await self._forward(request, _job_id(forwarded.group(1)), forwarded.group(2))
        context = self.context
        if path == paths.KEEP_ALIVE:
            _method(request, "GET")
            config, now, environment = context.config, context.clock(), context.environment
            return _ok(await self._in_worker(keep_alive, config, now, environment), b"text/plain")
        if path == paths.JOBS:
            _method(request, "GET")
            return _ok(await self._in_worker(queue.jobs, context), b"application/x-ndjson")
        if path == paths.STATUS:
            _method(request, "GET")
            return _ok(await self._in_worker(queue.status, context), JSON)
        if path == paths.SUBMIT:
            _method(request, "POST")
            service, port, token = _submission(await request.body.read(paths.MAX_COMMAND_BODY))
            return _ok(await self._in_worker(queue.submit, context, service, port, token))
        cancel = paths.CANCEL.fullmatch(path)
        if cancel:
            _method(request, "POST")
            return _ok(await self._in_worker(queue.cancel, context, _job_id(cancel.group(1))))
        probe = paths.PROBE.fullmatch(path)
        if probe:
            _method(request, "GET")
            return await self._probe(_job_id(probe.group(1)), _probe_path(query))
        raise RequestFailed(404, "no such path in a session")

    async def aclose(self) -> None:
        await self.forwarder.aclose()
        self._queue_worker.shutdown(wait=False)

    async def _probe(self, job_id: str, path: str) -> Reply:
        """Whether the job answers ``path`` with a 2xx within the probe timeout."""
        job = await self._running_job(job_id)
        timeout = self.context.config.probe_timeout
        started = time.perf_counter()
        error = ""
        try:
            status = await asyncio.wait_for(self.forwarder.status_of(job, path), timeout)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except asyncio.TimeoutError:
            error = f"no answer within {timeout:g} s"
        except UpstreamError as failed:
            error = f"{type(failed).__name__}: {failed}"
        record = {"ok": not error, "latency": time.perf_counter() - started, "error": error}
        return _ok(json.dumps(record, separators=(",", ":")).encode() + b"\n", JSON)

    async def _forward(self, request: IncomingRequest, job_id: str, target: str) -> Reply:
        if request.method not in paths.METHODS:
            allowed = " ".join(sorted(paths.METHODS))
            raise RequestFailed(405, f"the request method is not one of {allowed}")
        if not paths.plain_target(target):
            raise RequestFailed(400, "the path must be a plain /path?query without '..'")
        return await self.forwarder.forward(request, await self._running_job(job_id), target)

    async def _running_job(self, job_id: str) -> JobRecord:
        """saia's running job ``job_id``, from this session's fresh look at the queue when it
        has it (no I/O, no thread); else from the cache file or Slurm, on the worker."""
        job = self.context.routes().remembered(job_id)
        if job is not None and queue.allowed(self.context.config, job):
            return job
        return await self._in_worker(queue.running_job, self.context, job_id)

    async def _in_worker(self, function: Callable[..., Result], *args: Any) -> Result:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._queue_worker, function, *args)
        except Refusal as refusal:
            raise RequestFailed.from_exit(refusal.exit_code, refusal.message) from None


def _ok(body: bytes, content_type: bytes = b"text/plain") -> Reply:
    return Reply.whole(200, [(b"content-type", content_type)] if body else [], body)


def _method(request: IncomingRequest, allowed: str) -> None:
    if request.method != allowed:
        raise RequestFailed(405, f"{request.path.partition('?')[0]} takes {allowed} only")


def _job_id(value: str) -> str:
    if not ids.SLURM_JOB_ID.fullmatch(value):
        raise RequestFailed(400, f"job id {_shown(value)} is not a plain Slurm job number")
    return value


def _probe_path(query: str) -> str:
    if not query:
        return ids.DEFAULT_PROBE_PATH
    name, _, value = query.partition("=")
    path = unquote(value)
    if name != "path" or "&" in value:
        raise RequestFailed(400, "a probe takes one query parameter: path")
    if not ids.plain_path(path):
        raise RequestFailed(400, f"path {_shown(path)} is not /[A-Za-z0-9._~/-] without '..'")
    return path


def _submission(body: bytes) -> tuple[str, int, str]:
    try:
        fields = json.loads(body)
    except ValueError:
        raise RequestFailed(400, "the body must be JSON", exits.BAD_DATA) from None
    if not isinstance(fields, dict) or set(fields) != paths.SUBMIT_FIELDS:
        raise RequestFailed(400, 'the body must be {"service": .., "port": .., "token": ..}')
    service, port, token = fields["service"], fields["port"], fields["token"]
    if not isinstance(service, str) or not ids.SERVICE_ID.fullmatch(service):
        raise RequestFailed(400, f"service {_shown(service)} is not 1-128 of [A-Za-z0-9._-]")
    if not ids.is_port(port):
        span = f"{ids.PORT_MIN} to {ids.PORT_MAX}"
        raise RequestFailed(400, f"port {_shown(port)} is not a number from {span}")
    if not isinstance(token, str) or not ids.TOKEN.fullmatch(token):
        raise RequestFailed(400, f"token {_shown(token)} is not 16 lowercase hex digits")
    return service, port, token


def _shown(value: object, limit: int = 40) -> str:
    """A refused value, quoted and cut short, for an error message."""
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")
