"""``keep-alive``, and in login-node placement a controller pass, at most every so often.

As in the original SAIA, the hub's keep-alive is the login node's clock. The
pass itself runs as its own detached process (the controller takes its own
lock), so the keep-alive answers at once and a slow pass never holds a channel.
The rate limit is a time stamp file read and written under an flock, so two
keep-alives arriving together start one pass, not two.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from saia.entrypoint.config import EntrypointConfig, LoginNodePlacement
from saia.entrypoint.flock import flock
from saia.entrypoint.refusal import Refusal
from saia.protocol import exits


def keep_alive(config: EntrypointConfig, now: float, environment: Mapping[str, str]) -> bytes:
    """``ok``, after starting a controller pass if this login node runs the controller."""
    placement = config.login_node
    if placement is not None:
        try:
            trigger_pass(placement, config.keep_alive_lock, config.keep_alive_stamp, now,
                         environment)  # fmt: skip
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            message = f"login_node: cannot start a controller pass: {where}{error.strerror}"
            raise Refusal(message, exits.CONFIG) from None
    return b"ok\n"


def trigger_pass(
    placement: LoginNodePlacement,
    lock_path: str,
    stamp_path: str,
    now: float,
    environment: Mapping[str, str],
) -> bool:
    """Start the controller command unless one was started less than min_interval ago."""
    os.makedirs(os.path.dirname(stamp_path), mode=0o700, exist_ok=True)
    with flock(lock_path, wait=0.0) as held:
        if not held:
            return False  # another keep-alive is deciding right now
        try:
            last: float | None = os.stat(stamp_path).st_mtime
        except FileNotFoundError:
            last = None
        # A stamp in the future (the clock stepped back) does not block passes for ever.
        if last is not None and 0 <= now - last < placement.min_interval:
            return False
        with open(stamp_path, "a"):
            pass
        os.utime(stamp_path, (now, now))
        import subprocess  # noqa: PLC0415 (start-up cost: only in login-node placement)

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
