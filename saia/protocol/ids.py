"""The ids and values that cross from the hub to the login node, each checked on both sides.

Service ids travel in Slurm job names, command lines and URLs: they stay plain.
"""

from __future__ import annotations

import re

SERVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SBATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain file name, no '/'
PROBE_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,255}")
DEFAULT_PROBE_PATH = "/health"
# Digits only: saia submits no arrays, steps or heterogeneous jobs.
SLURM_JOB_ID = re.compile(r"[1-9][0-9]{0,9}")
TOKEN = re.compile(r"[0-9a-f]{16}")  # a job's submission token, also in its Slurm comment
PORT_MIN, PORT_MAX = 1024, 65535


def is_port(port: object) -> bool:
    """A port a job may be given: a whole number (not a bool) in PORT_MIN..PORT_MAX."""
    return isinstance(port, int) and not isinstance(port, bool) and PORT_MIN <= port <= PORT_MAX


def plain_path(path: str) -> bool:
    """A probe path: plain characters and no '..' segment."""
    return PROBE_PATH.fullmatch(path) is not None and ".." not in path.split("/")
