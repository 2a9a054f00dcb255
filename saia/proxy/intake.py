"""Reading and checking a request before anything is routed or recorded.

A POST under /v1/ names its model in its body, as OpenAI's clients send it: the JSON
body's ``model``, or a multipart form's ``model`` field (audio). SAIA's
``inference-service`` header names it too, and is all that routes a GET. Either name
may be a service's id or one of its aliases; where both are given they must name the
same service. The body goes on byte for byte, unless the proxy must change it: a
stream asked for its usage chunk, or an alias replaced by the service's id, the one
name a job serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request

from saia.proxy import form
from saia.proxy.errors import ProxyError

# Endpoints whose streams can carry a final usage chunk when asked to.
USAGE_STREAM_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
SERVICE_HEADER = "inference-service"  # SAIA's header, for paths without a model in the body
NO_MODEL = f"the request names no model: give the body's 'model' or the {SERVICE_HEADER!r} header"


@dataclass(frozen=True, slots=True)
class Intake:
    service: str  # the service's id, whatever name the client used
    streaming: bool
    body: bytes  # what goes to the backend
    method: str = "POST"
    # The proxy asked for the stream's usage chunk, not the client: it is taken out.
    usage_added: bool = False


@dataclass(frozen=True, slots=True)
class Asked:
    """A request as read, before its names are resolved."""

    method: str
    model: str | None  # the body's
    header: str | None  # the inference-service header's
    streaming: bool
    body: bytes  # as the client sent it
    document: dict[str, Any] | None = None  # the JSON body, parsed, to change it
    model_span: tuple[int, int] | None = None  # where a form's model value is in the body
    add_usage: bool = False  # stream_options.include_usage is to be added


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


def read(method: str, path: str, headers: Headers, raw: bytes, add_usage: bool) -> Asked:
    """What the request names, and how; 400 where it names nothing to route by."""
    header = headers.get(SERVICE_HEADER) or None
    if method != "POST":
        if header is None:
            raise ProxyError(400, f"name the service in the {SERVICE_HEADER!r} header",
                             "missing_service")  # fmt: skip
        return Asked(method, None, header, streaming=False, body=raw)
    content_type = headers.get("content-type", "")
    if form.is_multipart(content_type):
        return _form(header, raw, content_type)
    return _json(path, header, raw, add_usage)


def _form(header: str | None, raw: bytes, content_type: str) -> Asked:
    span = form.field_span(raw, content_type, "model")
    model = None if span is None else raw[span[0] : span[1]].decode("utf-8", "replace")
    if not model and header is None:
        raise ProxyError(400, NO_MODEL, "missing_model")
    return Asked("POST", model or None, header, streaming=False, body=raw,
                 model_span=span if model else None)  # fmt: skip


def _json(path: str, header: str | None, raw: bytes, add_usage: bool) -> Asked:
    """A body that is not a JSON object is the header's to route, and passes untouched."""
    try:
        document: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if header is None:
            raise ProxyError(400, "the request body is not valid JSON", "invalid_json") from None
        return Asked("POST", None, header, streaming=False, body=raw)
    if not isinstance(document, dict):
        if header is None:
            raise ProxyError(400, "the request body must be a JSON object", "invalid_json")
        return Asked("POST", None, header, streaming=False, body=raw)
    model = document.get("model")
    if not isinstance(model, str) or not model:
        if header is None:
            raise ProxyError(400, NO_MODEL, "missing_model")
        model = None
    streaming = document.get("stream") is True
    usage = add_usage and streaming and path in USAGE_STREAM_PATHS and not _asks_usage(document)
    return Asked("POST", model, header, streaming, raw, document, add_usage=usage)


def _asks_usage(document: dict[str, Any]) -> bool:
    options = document.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def service_of(asked: Asked, resolve: Callable[[str], str | None]) -> str:
    """The id of the service the request names: 404 for a name no service has, 400 where
    the body and the header name different services."""
    from_body = from_header = None
    if asked.model is not None:
        from_body = resolve(asked.model)
        if from_body is None:
            raise ProxyError(404, f"the model {asked.model!r} does not exist", "model_not_found")
    if asked.header is not None:
        from_header = resolve(asked.header)
        if from_header is None:
            raise ProxyError(404, f"the service {asked.header!r} does not exist",
                             "model_not_found")  # fmt: skip
    if from_body is not None and from_header is not None and from_body != from_header:
        message = (f"the body's model {asked.model!r} and the {SERVICE_HEADER!r} header's "
                   f"{asked.header!r} name different services")  # fmt: skip
        raise ProxyError(400, message, "model_mismatch")
    service = from_body or from_header
    assert service is not None, "read() lets no request through that names nothing"
    return service


def forwarded(asked: Asked, service: str) -> Intake:
    """The request for ``service``, its body as the job is to get it."""
    renamed = asked.model is not None and asked.model != service
    body = asked.body
    if asked.document is not None and (renamed or asked.add_usage):
        document = dict(asked.document)
        if renamed:
            document["model"] = service
        if asked.add_usage:
            options = document.get("stream_options")
            document["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                          "include_usage": True}  # fmt: skip
        body = orjson.dumps(document)
    elif asked.model_span is not None and renamed:
        start, end = asked.model_span
        body = b"".join((body[:start], service.encode(), body[end:]))
    return Intake(service, asked.streaming, body, asked.method, usage_added=asked.add_usage)
