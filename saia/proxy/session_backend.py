"""Hub placement: requests reach jobs through the login node's ``saia-entrypoint session``.

Every request is one HTTP/2 stream on the one SSH channel, at
``/jobs/<slurm-job-id>/http/<path>``; the entrypoint checks that the job is a
running saia job and forwards to its node and port.
"""

from __future__ import annotations

from saia.adapters.session_client import SessionClosed, SessionSource, StreamReset
from saia.domain.state import JobView
from saia.protocol.session import EXIT_CODE_HEADER, http_path
from saia.proxy.backend import (
    AnswerBroken,
    BackendUnreachable,
    Headers,
    LinkDown,
    RequestRefused,
    UpstreamResponse,
)

# Statuses with which the entrypoint says the job may have seen part of the request.
MAYBE_REACHED = frozenset({502, 504})


class SessionBackend:
    def __init__(self, sessions: SessionSource) -> None:
        self._sessions = sessions

    async def send(
        self, job: JobView, method: str, path: str, headers: Headers, body: bytes
    ) -> UpstreamResponse:
        if not job.slurm_job_id:
            raise BackendUnreachable(job, "no Slurm job id yet")
        try:
            client = await self._sessions.session()
            response = await client.request(
                method, http_path(job.slurm_job_id, path), headers, body
            )
        except SessionClosed as error:
            raise LinkDown(job, str(error)) from error
        except StreamReset as error:  # before the answer's head: this job's doing
            raise BackendUnreachable(job, str(error)) from error
        # The entrypoint marks its own answers with this header; the job's answers lack it.
        # Its reasons name nodes, ports and jobs: they go to the log, never to the client.
        if response.header(EXIT_CODE_HEADER) is not None:
            detail = await response.read()
            reason = detail.decode(errors="replace").strip()
            if _the_requests_fault(response.status):
                raise RequestRefused(response.status, reason)
            # "cannot connect": the job never saw the request, like every refusal of the
            # entrypoint's own (a job that is no longer running, say). Other 502/504s may
            # have reached it: those are answered, not retried.
            if response.status not in MAYBE_REACHED or b"cannot connect" in detail:
                raise BackendUnreachable(job, reason)
            raise AnswerBroken(reason)
        return UpstreamResponse(response.status, response.headers, response, response.aclose)


def _the_requests_fault(status: int) -> bool:
    """An entrypoint's 4xx is about the request (its path, method, headers or body); its
    403 is about the job (not saia's, or no longer running), which another may replace."""
    return 400 <= status < 500 and status != 403

