"""Each job's secret, by which it knows that a request comes from saia.

A job's port on a shared compute node is open to every user of the cluster.
So each job gets a secret with its submission, in its environment (never on a
command line, where ``ps`` would show it to everyone), and refuses requests
that do not carry it as ``Authorization: Bearer``. The secret is an HMAC of the
job's token under a key in the entrypoint's state folder (created on first
use, mode 0600), so nothing per job is stored and a request costs one HMAC.
The entrypoint presents it for the hub; in login-node placement saia's own
proxy and controller, run by the same account, read the same key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Callable

KEY_BYTES = 32


def load_key(state_dir: str) -> bytes:
    """The login node's key, made on first use; two processes racing make one key."""
    path = os.path.join(state_dir, "job-secret.key")
    try:
        with open(path, "rb") as file:
            key = file.read()
    except FileNotFoundError:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_key(state_dir)  # another process made it meanwhile
        key = os.urandom(KEY_BYTES)
        with os.fdopen(descriptor, "wb") as file:
            file.write(key)
    if len(key) != KEY_BYTES:
        # A half-written key (a crash while making it) would give jobs other secrets.
        raise OSError(f"{path} does not hold a {KEY_BYTES}-byte key; remove it to make a new one")
    return key


def for_job(key: bytes, token: str) -> str:
    return hmac.new(key, token.encode("ascii"), hashlib.sha256).hexdigest()


def secrets_of(key: bytes) -> Callable[[str], str]:
    """``for_job`` under ``key``, remembered per token: a request costs a lookup, not an HMAC."""
    return functools.lru_cache(maxsize=4096)(functools.partial(for_job, key))
