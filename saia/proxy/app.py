"""The OpenAI-compatible API of the hub: models, and requests routed to the services' jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from saia.demand import DemandTracker
from saia.proxy.backend import Backend, Headers
from saia.proxy.errors import ProxyError, error_body, error_response
from saia.proxy.exchange import Exchange, WholeAnswer
from saia.proxy.identity import Caller, trusted_caller
from saia.proxy.intake import Intake, forwarded, read, read_body, service_of
from saia.proxy.keys import KeyChecker, bearer, key_id
from saia.proxy.limits import RateLimiter
from saia.proxy.metering import Meter
from saia.proxy.metrics import ProxyMetrics
from saia.proxy.models import model_routes
from saia.proxy.routing import Router, RoutingTable
from saia.proxy.settings import ProxySettings
from saia.recording import GroupCommitter

ROUTED = "/v1/"  # every POST under it is routed by the model its body names
# Response headers that describe the backend's hop, not the answer.
DROPPED_RESPONSE_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
)
LENGTH = frozenset({"content-length"})
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def create_app(
    hub: RoutingTable,
    demand: DemandTracker,
    recorder: GroupCommitter,
    backend: Backend,
    settings: ProxySettings,
    wake: Callable[[], None],
    keys: KeyChecker | None = None,
    link_up: Callable[[], bool] | None = None,
) -> ASGIApp:
    """``keys`` checks API keys when ``settings.require_api_key``; else the user (and the
    user's groups) come from the trusted headers, or the user is anonymous. ``link_up``
    tells /metrics whether the SSH link to the login node is up (hub placement)."""
    if settings.require_api_key and keys is None:
        raise ValueError("require_api_key is set but no key checker was given")
    router = Router(hub, demand, settings, wake)
    metrics = ProxyMetrics()
    per_minute = settings.rate_limit_per_minute
    limiter = RateLimiter(per_minute) if per_minute else None

    async def health(request: Request) -> Response:
        return JsonResponse({"status": "ok"})

    async def forward(request: Request) -> Response:
        try:
            return await _forward(request)
        except ProxyError as error:
            return error_response(error)

    async def _forward(request: Request) -> Response:
        try:
            caller, limit_headers, path, intake = await admit(request, settings, keys, limiter,
                                                              router)  # fmt: skip
        except ProxyError as error:
            # Counted, not recorded: a flood of bad keys must not be able to fill the log.
            metrics.refused(error.status)
            raise
        exchange = Exchange(intake, caller, path, backend_headers(request), router,
                            backend, recorder, settings, metrics)  # fmt: skip
        exchange.record_start()
        try:
            routed = await (exchange.try_route() if intake.streaming else exchange.route())
        except ProxyError as error:
            exchange.reject(error)
            raise
        if routed is None:  # a stream with no job to go to yet: it waits, and says so
            await exchange.started_recorded()
            return StreamingResponse(waiting_stream(exchange), media_type="text/event-stream",
                                     headers=SSE_HEADERS)  # fmt: skip
        job, upstream = routed
        try:
            await exchange.started_recorded()
        except ProxyError:
            await upstream.close()
            router.release(intake.service, job)
            raise
        body = exchange.relay(upstream, Meter(streaming=intake.streaming))
        headers = response_headers(upstream.headers, intake.streaming) | limit_headers
        if not intake.streaming:
            return WholeAnswer(body, status_code=upstream.status, headers=headers)
        return StreamingResponse(body, status_code=upstream.status, headers=headers)

    async def prometheus(request: Request) -> Response:
        with hub.lock:
            services = dict(hub.state.services)
            link = None if link_up is None else link_up()
            text = metrics.render(router, services, link, recorder.held_events)
        return Response(text, media_type="text/plain; version=0.0.4")

    routes = [Route("/health", health), Route("/metrics", prometheus),
              *model_routes(hub, router, lambda request: authenticate(request, settings, keys)),
              Route("/v1/{rest:path}", forward)]  # fmt: skip
    return Direct(Starlette(routes=routes), forward)


class Direct:
    """The POSTs under /v1/ straight to their handler; everything else through Starlette.

    Starlette's middleware, routing and request wrapper cost about a tenth of the
    proxy's CPU on each request. The handler answers every error of its own
    (ProxyError) itself; anything else it raises reaches uvicorn, which answers
    500 as Starlette's error middleware would, and logs it.
    """

    def __init__(self, app: Starlette, forward: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = app
        self._forward = forward

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].startswith(ROUTED)):  # fmt: skip
            response = await self._forward(Request(scope, receive, send))
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def waiting_stream(exchange: Exchange) -> AsyncIterator[bytes]:
    """SSE comment lines while no backend is ready, so clients and gateways keep waiting."""
    routing = asyncio.ensure_future(exchange.route())
    try:
        while True:
            done, _ = await asyncio.wait({routing}, timeout=exchange.settings.keepalive_interval)
            if done:
                break
            yield b": waiting\n\n"
    finally:
        if not routing.done():
            routing.cancel()  # the client left while waiting
    try:
        _, upstream = routing.result()
    except ProxyError as error:
        exchange.reject(error)
        # The 200 is out already: the error travels as an SSE event, as OpenAI's do.
        yield b"data: " + error_body(error.status, error.message, error.code) + b"\n\n"
        return
    async for chunk in exchange.relay(upstream, Meter(streaming=True)):
        yield chunk


async def admit(
    request: Request,
    settings: ProxySettings,
    keys: KeyChecker | None,
    limiter: RateLimiter | None,
    router: Router,
) -> tuple[Caller, dict[str, str], str, Intake]:
    """Who asks, their rate-limit headers, the path and the checked request of a service
    that exists; or the ProxyError that turns it away before it is routed."""
    caller = authenticate(request, settings, keys)  # before the body is even read
    limit_headers = {} if limiter is None else limiter.take(caller.limited_as)
    raw = await read_body(request, settings.max_body_bytes)
    asked = read(request.method, request.scope["path"], request.headers, raw,
                 settings.include_usage)  # fmt: skip
    intake = forwarded(asked, service_of(asked, router.resolve))
    return caller, limit_headers, as_sent(request.scope), intake


def as_sent(scope: Scope) -> str:
    """The path and query as the client sent them, still percent-encoded, to pass on."""
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def authenticate(request: Request, settings: ProxySettings, keys: KeyChecker | None) -> Caller:
    if keys is None or not settings.require_api_key:
        return trusted_caller(request.headers, settings)
    presented = bearer(request.headers.get("authorization"))
    user = None if presented is None else keys.user_of(presented)
    if presented is None or user is None:
        raise ProxyError(401, "the API key is missing, wrong or revoked", "invalid_api_key")
    key = key_id(presented)
    return Caller(user, f"key:{key}", key)


def backend_headers(request: Request) -> Headers:
    """Only what the backend needs: never the client's credentials or cookies."""
    headers = [("content-type", request.headers.get("content-type", "application/json"))]
    accept = request.headers.get("accept")
    if accept:
        headers.append(("accept", accept))
    return headers


def response_headers(upstream: Headers, streaming: bool) -> dict[str, str]:
    """A whole answer keeps its Content-Length (its body goes on as it is); a stream is chunked."""
    dropped = DROPPED_RESPONSE_HEADERS if streaming else DROPPED_RESPONSE_HEADERS - LENGTH
    headers = {k: v for k, v in upstream if k.lower() not in dropped}
    if streaming:
        headers.update(SSE_HEADERS)
    return headers
