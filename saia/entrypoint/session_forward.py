"""``* /jobs/<id>/http/<path>``: a stream's request to a saia job's port, on kept connections.

A session lives long, so it keeps connections to the jobs open and reuses
them (saia.entrypoint.upstream), and passes bodies through as they come in
both directions: the request body as the hub sends it, the response
(server-sent events included) chunk by chunk as the job produces it. Reading
from the job waits while the hub's window is closed, so a large response is
never held here in full.

Hop-by-hop headers are dropped both ways (HTTP/2 forbids them anyway); Host is
the job's, and Authorization the job's secret (saia.protocol.job_secret): what
the hub's client sent as its own is never passed on. Error messages name the
job and the kind of failure, never a header, a body or the path, which may
carry a key in its query.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from saia.entrypoint.config import EntrypointConfig
from saia.entrypoint.session_messages import (
    BodyTooLarge,
    Header,
    IncomingRequest,
    Reply,
    RequestFailed,
)
from saia.entrypoint.upstream import (
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from saia.protocol import exits, job_secret
from saia.protocol.jobs import JobRecord

# Hop-by-hop headers, those set here (Host, Authorization) and the framing HTTP/2 replaces.
REQUEST_HEADERS_DROPPED = frozenset(
    {b"authorization", b"connection", b"expect", b"host", b"keep-alive",
     b"proxy-authorization", b"proxy-connection", b"te", b"trailer", b"upgrade",
     b"transfer-encoding"}
)  # fmt: skip
RESPONSE_HEADERS_DROPPED = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
     b"te", b"trailer"}
)  # fmt: skip


class Forwarder:
    """Requests of a session's streams to saia's jobs, over kept connections."""

    def __init__(self, config: EntrypointConfig) -> None:
        self.config = config
        self.upstream = UpstreamPool(config.connect_timeout, config.idle_timeout)
        self._secret: Callable[[str], str] | None = None  # made on first use

    async def forward(self, request: IncomingRequest, job: JobRecord, target: str) -> Reply:
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
        headers.append(self._bearer(job))
        where = f"job {job.job_id} ({job.batch_host}:{job.port})"
        try:
            response = await self.upstream.request(
                job.batch_host, job.port, request.method, target, headers, content
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

    async def status_of(self, job: JobRecord, path: str) -> int:
        """The status of the job's answer to ``GET path``; its body is never read."""
        headers = [self._bearer(job)]
        response = await self.upstream.request(job.batch_host, job.port, "GET", path, headers, b"")
        await response.aclose()
        return response.status

    def _bearer(self, job: JobRecord) -> tuple[bytes, bytes]:
        if self._secret is None:
            try:
                self._secret = job_secret.secrets_of(job_secret.load_key(self.config.state_dir))
            except OSError as error:
                raise RequestFailed(500, f"state_dir: {error}", exits.CONFIG) from None
        return (b"authorization", f"Bearer {self._secret(job.token)}".encode())

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
