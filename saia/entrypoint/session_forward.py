"""``* /jobs/<id>/http/<path>``: a stream's request to a saia job's port, on kept connections.

The single-shot ``forward`` verb opens a connection per request. A session
lives long, so it keeps connections to the jobs open and reuses them
(saia.entrypoint.session_upstream), and passes bodies through as they come in
both directions: the request body as the hub sends it, the response
(server-sent events included) chunk by chunk as the job produces it. Reading
from the job waits while the hub's window is closed, so a large response is
never held here in full.

Hop-by-hop headers are dropped both ways (HTTP/2 forbids them anyway); Host is
the job's. Error messages name the job and the kind of failure, never a
header, a body or the path, which may carry a key in its query.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from saia.entrypoint import exits, relay
from saia.entrypoint.config import EntrypointConfig
from saia.entrypoint.routes import Route
from saia.entrypoint.session_messages import (
    BodyTooLarge,
    Header,
    IncomingRequest,
    Reply,
    RequestFailed,
)
from saia.entrypoint.session_upstream import (
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
)

# The forward verb's list (relay.DROPPED), and the framing HTTP/2 replaces.
REQUEST_HEADERS_DROPPED = relay.DROPPED | {b"transfer-encoding"}
RESPONSE_HEADERS_DROPPED = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
     b"te", b"trailer"}
)  # fmt: skip


class Forwarder:
    """Requests of a session's streams to saia's jobs, over kept connections."""

    def __init__(self, config: EntrypointConfig) -> None:
        self.config = config
        self.upstream = UpstreamPool(config.connect_timeout, config.idle_timeout)

    async def forward(self, request: IncomingRequest, route: Route, target: str) -> Reply:
        """The job's answer to ``request``, its body still to be read from the job."""
        limit = self.config.max_body_bytes
        declared = _content_length(request.headers)
        if declared is not None and declared > limit:
            message = f"the request body is larger than {limit} bytes"
            raise RequestFailed(413, message, exits.BAD_DATA)
        content: bytes | AsyncIterator[bytes]
        # A body that came whole with its headers (most do) goes out with a Content-Length.
        if request.body.complete:
            content = await request.body.read(limit)
        else:
            content = request.body.chunks(limit)
        headers = [(n, v) for n, v in request.headers if n not in REQUEST_HEADERS_DROPPED]
        where = f"job {route.job_id} ({route.host}:{route.port})"
        try:
            response = await self.upstream.request(
                route.host, route.port, request.method, target, headers, content
            )
        except BodyTooLarge as error:
            raise RequestFailed(413, str(error), exits.BAD_DATA) from None
        except UpstreamUnreachable as error:
            message = f"{where}: cannot connect ({error})"
            raise RequestFailed(502, message, exits.UNAVAILABLE) from None
        except UpstreamTimeout as error:
            raise RequestFailed(504, f"{where}: {error}", exits.UNAVAILABLE) from None
        except UpstreamError as error:
            raise RequestFailed(502, f"{where}: {error}", exits.UNAVAILABLE) from None
        kept = [
            (name.lower(), value)
            for name, value in response.headers
            if name.lower() not in RESPONSE_HEADERS_DROPPED
        ]
        return Reply(response.status, kept, response.chunks(), response.aclose)

    async def aclose(self) -> None:
        await self.upstream.aclose()


def _content_length(headers: list[Header]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise RequestFailed(400, "content-length is not a number") from None
    return None
