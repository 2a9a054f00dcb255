"""Errors in the OpenAI error body shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import orjson
from starlette.responses import Response

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    502: "api_error",
    503: "service_unavailable",
}


class ProxyError(Exception):
    """A refusal with its HTTP status; becomes an OpenAI-shaped error response."""

    def __init__(
        self, status: int, message: str, code: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, code: str) -> bytes:
    error = {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "param": None,
             "code": code}  # fmt: skip
    return orjson.dumps({"error": error})


def error_response(error: ProxyError) -> Response:
    return Response(
        error_body(error.status, error.message, error.code),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )
