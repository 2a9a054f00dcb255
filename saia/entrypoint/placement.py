"""Login-node placement: ``keep-alive`` starts a controller pass, at most every so often.

As in the original SAIA, the hub's keep-alive is the login node's clock. The
pass itself runs as its own detached process (the controller takes its own
lock), so the keep-alive answers at once and a slow pass never holds a channel.
The rate limit is a time stamp file read and written under an flock, so two
keep-alives arriving together start one pass, not two.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from saia.adapters.lock import FileLock
from saia.entrypoint.config import LoginNodePlacement


def trigger_pass(
    placement: LoginNodePlacement,
    lock_path: str,
    stamp_path: str,
    now: float,
    environment: Mapping[str, str],
) -> bool:
    """Start the controller command unless one was started less than min_interval ago."""
    os.makedirs(os.path.dirname(stamp_path), mode=0o700, exist_ok=True)
    lock = FileLock(Path(lock_path), timeout=0.0)
    if not lock.acquire(blocking=False):
        return False  # another keep-alive is deciding right now
    try:
        try:
            last = os.stat(stamp_path).st_mtime
        except FileNotFoundError:
            last = None
        # A stamp in the future (the clock stepped back) does not block passes for ever.
        if last is not None and 0 <= now - last < placement.min_interval:
            return False
        with open(stamp_path, "a"):
            pass
        os.utime(stamp_path, (now, now))
        subprocess.Popen(
            list(placement.controller_command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=dict(environment),
            start_new_session=True,  # outlives this channel; sshd does not wait for it
            close_fds=True,
        )
        return True
    finally:
        lock.release()
