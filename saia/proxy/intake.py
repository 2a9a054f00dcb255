"""Reading and checking a request before anything is routed or recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from saia.proxy.errors import ProxyError

# Endpoints whose streams can carry a final usage chunk when asked to.
USAGE_STREAM_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
SERVICE_HEADER = "inference-service"  # SAIA's header for paths without a model in the body


@dataclass(frozen=True, slots=True)
class Intake:
    service: str
    streaming: bool
    body: bytes  # what goes to the backend, stream_options added when asked to
    method: str = "POST"


def by_header(method: str, service: str | None, raw: bytes) -> Intake:
    """Other /v1 paths: the service named by a header, the body passed on untouched."""
    if not service:
        raise ProxyError(400, f"name the service in the {SERVICE_HEADER!r} header",
                         "missing_service")  # fmt: skip
    return Intake(service=service, streaming=False, body=raw, method=method)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProxyError(413, f"the request body exceeds {limit} bytes", "body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # chunked uploads declare no length
            raise ProxyError(413, f"the request body exceeds {limit} bytes", "body_too_large")
    return bytes(body)


def parse(path: str, raw: bytes, add_usage: bool) -> Intake:
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProxyError(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise ProxyError(400, "the request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ProxyError(400, "the request names no model", "missing_model")
    streaming = body.get("stream") is True
    if streaming and add_usage and path in USAGE_STREAM_PATHS:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        if options.get("include_usage") is not True:
            options["include_usage"] = True
            body["stream_options"] = options
            raw = orjson.dumps(body)
    return Intake(service=model, streaming=streaming, body=raw)
