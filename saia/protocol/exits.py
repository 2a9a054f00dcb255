"""Exit codes of saia-entrypoint, after sysexits.h, so the hub can tell refusals apart."""

from __future__ import annotations

OK = 0
REFUSED = 64  # EX_USAGE: not a command of the grammar (unknown verb, wrong arguments)
BAD_DATA = 65  # EX_DATAERR: bytes that cannot be a command, or a malformed request on stdin
UNAVAILABLE = 69  # EX_UNAVAILABLE: not implemented, backend not reachable, sbatch refused
SOFTWARE = 70  # EX_SOFTWARE: a bug in the entrypoint
TEMPORARY = 75  # EX_TEMPFAIL: Slurm did not answer in time; try again
NOT_PERMITTED = 77  # EX_NOPERM: not saia's job, not running, service or port not allowed
CONFIG = 78  # EX_CONFIG: the login node's configuration is missing or wrong
