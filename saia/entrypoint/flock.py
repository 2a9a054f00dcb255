"""An exclusive lock that dies with its holder: flock(2) on a file in the state folder.

The kernel drops a flock when its process exits, however it exits, so a
crashed entrypoint never wedges the next one.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def flock(path: str, wait: float) -> Iterator[bool]:
    """Hold the lock inside the block if it could be had within ``wait`` seconds (else False)."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.05)
        yield True
    finally:
        os.close(descriptor)  # which drops the lock
