"""One proxied request from routing to its recorded end.

The Started event is handed to the group committer first and awaited only
before the answer's first byte goes out, so its transaction overlaps the
backend's work instead of adding to it. The Finished (or Rejected) event is
handed over and not awaited: the answer is out already.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from concurrent.futures import Future
from contextlib import aclosing
from datetime import UTC, datetime
from uuid import UUID, uuid4

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from saia.domain.request import Request
from saia.domain.state import JobView
from saia.proxy.backend import (
    AnswerBroken,
    Backend,
    BackendUnreachable,
    Headers,
    LinkDown,
    RequestRefused,
    UpstreamResponse,
)
from saia.proxy.errors import ProxyError, error_body
from saia.proxy.identity import Caller
from saia.proxy.intake import Intake
from saia.proxy.metering import Meter
from saia.proxy.metrics import ProxyMetrics
from saia.proxy.routing import Router
from saia.proxy.settings import ProxySettings
from saia.proxy.usage_chunk import UsageChunkFilter
from saia.recording import GroupCommitter, RecorderClosed, RecorderOverloaded, StoreUnavailable

logger = logging.getLogger("saia.proxy")

CLIENT_GONE = 499  # nginx's convention: the client closed the connection first
BROKEN_OFF = 502  # the answer started but did not finish


def now() -> datetime:
    return datetime.fromtimestamp(time.time(), UTC)


def not_recorded() -> ProxyError:
    # No request is served unrecorded: refusing is the only honest answer.
    return ProxyError(503, "requests cannot be recorded right now", "recording_failed",
                      {"retry-after": "5"})  # fmt: skip


class Exchange:
    def __init__(
        self,
        intake: Intake,
        caller: Caller,
        path: str,
        headers: Headers,
        router: Router,
        backend: Backend,
        recorder: GroupCommitter,
        settings: ProxySettings,
        metrics: ProxyMetrics,
    ) -> None:
        self.arrived = time.monotonic()
        self.metrics = metrics
        self.intake = intake
        self.path = path
        self.headers = headers
        self.router = router
        self.backend = backend
        self.recorder = recorder
        self.settings = settings
        self.id: UUID = uuid4()
        self.job: JobView | None = None
        self.request = Request.start(self.id, caller.user, intake.service, "", len(intake.body),
                                     now(), caller.key, caller.org, caller.unit,
                                     caller.portal)  # fmt: skip
        self._started: asyncio.Future[None] | None = None
        self._tried: set[UUID] = set()  # jobs that refused this request
        self._attempts = 0

    def record_start(self) -> None:
        try:
            self._started = self.recorder.asubmit(self.request)
        except (RecorderClosed, RecorderOverloaded, StoreUnavailable) as error:
            logger.warning("request %s not recorded: %s", self.id, error)
            raise not_recorded() from None

    async def started_recorded(self) -> None:
        assert self._started is not None, "record_start() comes first"
        try:
            await self._started
        except Exception as error:
            logger.warning("request %s not recorded: %s", self.id, error)
            raise not_recorded() from None

    def reject(self, error: ProxyError) -> None:
        self.request.reject(error.status, error.code, now())
        self.metrics.observe(self.intake.service, error.status, time.monotonic() - self.arrived)
        self._hand_over()

    def finish(self, status: int, meter: Meter) -> None:
        usage = meter.usage()
        job = "" if self.job is None else str(self.job.id)
        self.request.finish(status, job, meter.bytes_out, usage.prompt_tokens,
                            usage.completion_tokens, now())  # fmt: skip
        self.metrics.observe(self.intake.service, status, time.monotonic() - self.arrived)
        self._hand_over()

    def _hand_over(self) -> None:
        try:
            future = self.recorder.submit(self.request)
        except (RecorderClosed, RecorderOverloaded, StoreUnavailable) as error:
            logger.error("the end of request %s is not recorded: %s", self.id, error)
            return
        future.add_done_callback(self._report_failure)

    def _report_failure(self, future: Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            logger.error("the end of request %s is not recorded: %s", self.id, future.exception())

    async def route(self) -> tuple[JobView, UpstreamResponse]:
        """A routable job that accepted the request; waits in the queue while there is none."""
        routed = await self._route(wait=True)
        assert routed is not None, "a wait ends with a job or a ProxyError"
        return routed

    async def try_route(self) -> tuple[JobView, UpstreamResponse] | None:
        """As route(), but None where it would wait: a stream waits in a way of its own."""
        return await self._route(wait=False)

    async def _route(self, wait: bool) -> tuple[JobView, UpstreamResponse] | None:
        service = self.intake.service
        while self._attempts < self.settings.connect_attempts:
            job = self.router.pick(service, self._tried)
            waited = job is None
            if job is None:
                if not wait:
                    return None
                # Nothing routable (left): a cold start, or every job refused. The jobs
                # that refused are set aside for a while, then may be tried again.
                job = await self._wait(service)
            self._attempts += 1
            self.router.acquire(service, job, was_waiting=waited)
            try:
                upstream = await self.backend.send(
                    job, self.intake.method, self.path, self.headers, self.intake.body
                )
            except LinkDown as error:
                # The link's error is for the log and /metrics, not for API clients.
                logger.warning("request %s: %s", self.id, error)
                self.router.release(service, job)
                raise ProxyError(502, f"the jobs of {service!r} cannot be reached now",
                                 "backend_unreachable") from None  # fmt: skip
            except RequestRefused as error:
                logger.info("request %s: %s", self.id, error)
                self.router.release(service, job)
                refused = "the request's path, headers or body are not accepted by the cluster"
                raise ProxyError(error.status, refused, "invalid_request") from None
            except BackendUnreachable as error:
                logger.warning("request %s: %s; it is set aside", self.id, error)
                self.router.release(service, job)
                self.router.set_aside(job)
                self.metrics.unreachable(service)
                self._tried.add(job.id)
                continue
            except AnswerBroken as error:  # the job may have seen the request: no retry
                logger.warning("request %s: job %s: %s", self.id, job.id, error)
                self.router.release(service, job)
                raise ProxyError(502, "the backend sent no valid answer",
                                 "bad_backend_answer") from None  # fmt: skip
            except BaseException:
                self.router.release(service, job)
                raise
            self.job = job
            return job, upstream
        raise ProxyError(502, f"no backend of {service!r} could be reached", "backend_unreachable")

    async def _wait(self, service: str) -> JobView:
        self.router.enter_queue(service)
        routed = False
        try:
            deadline = self.arrived + self.settings.max_wait_seconds
            job = await self.router.wait_for_target(service, deadline)
            routed = True
            return job
        finally:
            self.router.leave_queue(service, routed)

    async def relay(self, upstream: UpstreamResponse, meter: Meter) -> AsyncGenerator[bytes, None]:
        """The upstream body as it comes; the end recorded however it comes."""
        status = CLIENT_GONE  # unless the loop below ends otherwise
        chunks = aiter(upstream.chunks)
        # Streams only: a whole answer carries its usage in its one JSON document.
        unasked = UsageChunkFilter() if self.intake.usage_added else None
        try:
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    rest = b"" if unasked is None else unasked.flush()
                    if rest:
                        yield rest
                    status = upstream.status
                    break
                except Exception as error:  # the job or the link broke off mid-answer
                    status = BROKEN_OFF
                    logger.warning("request %s: the answer broke off: %r", self.id, error)
                    if not self.intake.streaming:
                        raise  # the client sees a cut connection, not a short JSON
                    message = "the backend broke off its answer"
                    yield b"data: " + error_body(502, message, "backend_broke_off") + b"\n\n"
                    break
                meter.feed(chunk)  # what the job sent, the usage the client did not ask for too
                if unasked is not None:
                    chunk = unasked.feed(chunk)
                    if not chunk:
                        continue
                yield chunk  # the client leaving raises here, and ends the loop
        finally:
            try:
                if self.intake.streaming:
                    # Cancelled when the client left: the shield lets the upstream close.
                    with anyio.CancelScope(shield=True):
                        await upstream.close()
                else:
                    # WholeAnswer has no watch task to cancel it; a scope costs 5% of the CPU.
                    await upstream.close()
            finally:
                assert self.job is not None
                self.router.release(self.intake.service, self.job)
                if status == CLIENT_GONE and meter.complete():
                    # The openai client closes a stream at [DONE], often before the job
                    # ends its body: the answer was whole all the same.
                    status = upstream.status
                self.finish(status, meter)


class WholeAnswer(Response):
    """A non-streamed answer, passed on as the job sends it.

    Starlette's StreamingResponse watches for a client that leaves in a task of its
    own, an anyio task group a request: about a tenth of the proxy's CPU. A whole
    answer is complete when its headers come and goes on in microseconds, so it does
    without the watch: a client that leaves in those microseconds is recorded with the
    job's status instead of 499. Streams, which last, keep StreamingResponse.
    """

    def __init__(
        self, body: AsyncGenerator[bytes, None], status_code: int, headers: Mapping[str, str]
    ) -> None:
        self.body_iterator = body
        self.status_code = status_code
        self.background = None
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in headers.items()]  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with aclosing(self.body_iterator) as body:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})  # fmt: skip
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
