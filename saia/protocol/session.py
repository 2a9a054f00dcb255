"""The ``session`` verb's paths: everything the hub asks of the login node, as HTTP/2 streams.

=================================  ==========================================
stream                             answer
=================================  ==========================================
GET  /keep-alive                   ``ok``; in login-node placement it may
                                   start a controller pass
GET  /slurm/jobs                   saia's jobs of this user, one JSON line
                                   each (saia.protocol.jobs)
GET  /slurm/status                 the configured services and their jobs
POST /slurm/submit                 the Slurm job id; the body is
                                   ``{"service": .., "port": .., "token": ..}``
POST /slurm/cancel/<slurm-job-id>  empty
GET  /jobs/<slurm-job-id>/probe    ``{"ok": .., "latency": .., "error": ..}``
     [?path=/health]
*    /jobs/<slurm-job-id>/http/..  the job's own answer to the request with
                                   the rest of the path (query included)
=================================  ==========================================

A refusal of the entrypoint's own carries EXIT_CODE_HEADER with the exit code
it means (saia.protocol.exits) and a JSON body ``{"error": .., "exit_code": ..}``;
an answer without that header is the job's.
"""

from __future__ import annotations

import re

from saia.protocol import exits

KEEP_ALIVE = "/keep-alive"
JOBS = "/slurm/jobs"
STATUS = "/slurm/status"
SUBMIT = "/slurm/submit"
CANCEL = re.compile(r"/slurm/cancel/([^/]*)")
PROBE = re.compile(r"/jobs/([^/]*)/probe")
HTTP = re.compile(r"/jobs/([^/?]*)/http(/.*)", re.DOTALL)
SUBMIT_FIELDS = frozenset({"service", "port", "token"})
# What a request to a job may be: one of these methods, and a plain target. No
# escapes in the path ('%2F' would be a '/' to the job but not to the checks here).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
TARGET = re.compile(r"/[A-Za-z0-9._~/-]{0,255}(\?[A-Za-z0-9._~=&%+,:-]{0,2048})?")
MAX_COMMAND_BODY = 4096  # a submit's JSON is a few dozen bytes

EXIT_CODE_HEADER = "saia-exit-code"
# The exit codes as HTTP statuses: a refusal means the same on a stream as it would
# as the exit of a command.
STATUS_OF_EXIT = {
    exits.REFUSED: 400,
    exits.BAD_DATA: 400,
    exits.UNAVAILABLE: 503,
    exits.SOFTWARE: 500,
    exits.TEMPORARY: 503,
    exits.NOT_PERMITTED: 403,
    exits.CONFIG: 500,
}


def plain_target(target: str) -> bool:
    """A path and query a job may be asked for: TARGET, and no '..' segment."""
    path = target.split("?", maxsplit=1)[0]
    return TARGET.fullmatch(target) is not None and ".." not in path.split("/")


def cancel_path(slurm_job_id: str) -> str:
    return f"/slurm/cancel/{slurm_job_id}"


def probe_path(slurm_job_id: str, path: str) -> str:
    return f"/jobs/{slurm_job_id}/probe?path={path}"


def http_path(slurm_job_id: str, target: str) -> str:
    """The stream path for ``target`` (a path with its query) on the job."""
    return f"/jobs/{slurm_job_id}/http{target}"
