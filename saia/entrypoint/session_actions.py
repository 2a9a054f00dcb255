"""What each path of a session does, with the single-shot verbs' own checks.

=================================  ==========================================
stream                             answer (the verb's own output as the body)
=================================  ==========================================
GET  /keep-alive                   ``ok``, as the keep-alive verb
GET  /slurm/jobs                   the jobs verb's JSON lines
GET  /slurm/status                 the status verb's JSON line
POST /slurm/submit                 the submit verb's job id; the body is
                                   ``{"service": .., "port": .., "token": ..}``
POST /slurm/cancel/<slurm-job-id>  empty, as the cancel verb
GET  /jobs/<slurm-job-id>/probe    the probe verb's JSON line;
     [?path=/health]               ``path`` as the probe verb takes it
*    /jobs/<slurm-job-id>/http/..  the job's own answer to the request with
                                   the rest of the path (query included)
=================================  ==========================================

Arguments go through saia.entrypoint.grammar exactly as they would on the
command line, and the verbs themselves run the checks of configured services,
ports in range and saia's own (running) jobs. A refusal answers the stream
with the status of its exit code (saia.entrypoint.session_messages) and the
session goes on.

The verbs are synchronous (Slurm's commands, the route cache file): they run
one at a time on a worker thread of their own, so the event loop keeps
serving other streams meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import unquote
from uuid import UUID

from saia.entrypoint import exits, grammar, http_verbs, legacy, relay, verbs
from saia.entrypoint.context import Context, Refusal
from saia.entrypoint.routes import Route
from saia.entrypoint.session_forward import Forwarder
from saia.entrypoint.session_messages import IncomingRequest, Reply, RequestFailed

MAX_COMMAND_BODY = 4096  # a submit's JSON is a few dozen bytes
CANCEL = re.compile(r"/slurm/cancel/([^/]*)")
PROBE = re.compile(r"/jobs/([^/]*)/probe")
HTTP = re.compile(r"/jobs/([^/?]*)/http(/.*)", re.DOTALL)

# Paths that only read (keep-alive aside, which may start a pass): GET, no arguments.
READS: dict[str, tuple[grammar.Command, bytes]] = {
    "/keep-alive": (grammar.KeepAlive(), b"text/plain"),
    "/slurm/jobs": (grammar.Jobs(), b"application/x-ndjson"),
    "/slurm/status": (grammar.Status(), b"application/json"),
}

Result = TypeVar("Result")


class SessionActions:
    """Answers one stream's request; shared by all streams of a session."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.forwarder = Forwarder(context.config)
        self._queue_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saia-queue")

    async def respond(self, request: IncomingRequest) -> Reply:
        path, _, query = request.path.partition("?")
        forwarded = HTTP.fullmatch(request.path)
        if forwarded:
            return await self._forward(request, forwarded.group(1), forwarded.group(2))
        if path in READS:
            _method(request, "GET")
            command, content_type = READS[path]
            return await self._verb(command, content_type)
        if path == "/slurm/submit":
            _method(request, "POST")
            command = _submit(await request.body.read(MAX_COMMAND_BODY))
            return await self._verb(command, b"text/plain")
        if cancel := CANCEL.fullmatch(path):
            _method(request, "POST")
            return await self._verb(_parsed(f"cancel {cancel.group(1)}", grammar.Cancel), b"")
        if probe := PROBE.fullmatch(path):
            _method(request, "GET")
            return await self._probe(_probe(probe.group(1), query))
        raise RequestFailed(404, "no such path in a session")

    async def aclose(self) -> None:
        await self.forwarder.aclose()
        self._queue_worker.shutdown(wait=False, cancel_futures=True)

    async def _verb(self, command: grammar.Command, content_type: bytes) -> Reply:
        output: list[bytes] = []
        await self._in_queue_worker(verbs.run, command, self._verb_context(output))
        headers = [(b"content-type", content_type)] if content_type else []
        return Reply.whole(200, headers, b"".join(output))

    async def _probe(self, command: grammar.Probe) -> Reply:
        """The probe verb's check, with its route looked up like every other."""
        route = await self._running_route(command.job_id)
        # httpx's prober runs its own event loop, so it gets a thread of its own.
        from saia.adapters.prober import HttpProber  # noqa: PLC0415 (probe's own import)
        from saia.ports import ProbeTarget  # noqa: PLC0415 (as above)

        job = UUID(int=int(command.job_id))
        target = ProbeTarget(job=job, host=route.host, port=route.port, path=command.path)
        timeout = self.context.config.probe_timeout
        prober = HttpProber(max_concurrency=1)
        loop = asyncio.get_running_loop()
        result = (await loop.run_in_executor(None, prober.probe, [target], timeout))[job]
        record = {"ok": result.ok, "latency": result.latency, "error": result.error}
        body = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        return Reply.whole(200, [(b"content-type", b"application/json")], body)

    async def _forward(self, request: IncomingRequest, job_id: str, target: str) -> Reply:
        command = _parsed(f"forward {job_id}", grammar.Forward)
        if request.method not in legacy.METHODS:
            allowed = " ".join(sorted(legacy.METHODS))
            raise RequestFailed(405, f"the request method is not one of {allowed}")
        # The forward verb's rule for its request target, to the letter.
        raw = target.encode()
        if not relay.FORWARD_TARGET.fullmatch(raw) or b".." in raw.split(b"?")[0].split(b"/"):
            raise RequestFailed(400, "the path must be a plain /path?query without '..'")
        route = await self._running_route(command.job_id)
        return await self.forwarder.forward(request, route, target)

    async def _running_route(self, job_id: str) -> Route:
        # The forward verb's own check: saia's job, and running, by the route cache.
        check = http_verbs.running_route
        return await self._in_queue_worker(check, job_id, self._verb_context([]))

    def _verb_context(self, output: list[bytes]) -> Context:
        # The session's Slurm adapter is shared; stdin and stdout are this stream's.
        return replace(
            self.context, read=_no_input, write=output.append, make_slurm=self.context.slurm
        )

    async def _in_queue_worker(self, function: Callable[..., Result], *args: Any) -> Result:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._queue_worker, function, *args)
        except Refusal as refusal:
            raise RequestFailed.from_exit(refusal.exit_code, refusal.message) from None


def _method(request: IncomingRequest, allowed: str) -> None:
    if request.method != allowed:
        raise RequestFailed(405, f"{request.path.partition('?')[0]} takes {allowed} only")


def _parsed(text: str, kind: type[Result]) -> Result:
    """``text`` read as the command line would be read; refused unless it is a ``kind``."""
    try:
        command = grammar.parse(text)
    except grammar.CommandRefused as refused:
        raise RequestFailed.from_exit(refused.exit_code, refused.reason) from None
    if not isinstance(command, kind):
        raise RequestFailed(400, "not a valid argument")
    return command


def _submit(body: bytes) -> grammar.Submit:
    try:
        fields = json.loads(body)
    except ValueError:
        raise RequestFailed(400, "the body must be JSON", exits.BAD_DATA) from None
    if not isinstance(fields, dict) or set(fields) != {"service", "port", "token"}:
        raise RequestFailed(400, 'the body must be {"service": .., "port": .., "token": ..}')
    service, port, token = fields["service"], fields["port"], fields["token"]
    if not isinstance(service, str) or not isinstance(token, str):
        raise RequestFailed(400, "service and token must be strings")
    if not isinstance(port, int) or isinstance(port, bool):
        raise RequestFailed(400, "port must be a whole number")
    command = _parsed(f"submit {service} {port} {token}", grammar.Submit)
    if command != grammar.Submit(service, port, token):  # a space cannot shift the fields
        raise RequestFailed(400, "not a valid argument")
    return command


def _probe(job_id: str, query: str) -> grammar.Probe:
    if not query:
        return _parsed(f"probe {job_id}", grammar.Probe)
    name, _, value = query.partition("=")
    if name != "path" or "&" in value:
        raise RequestFailed(400, "a probe takes one query parameter: path")
    return _parsed(f"probe {job_id} {unquote(value)}", grammar.Probe)


def _no_input() -> bytes:
    return b""
