"""Legacy requests as demand, for a controller on the login node (login-node placement).

An unmodified SAIA hub sends its users' requests in the legacy format, which
no saia proxy sees, so the entrypoint notes each request for a configured
service in ``<state_dir>/demand/<service>``, one time stamp per line, and the
controller counts the recent lines at each pass: a service at zero instances
starts on its first request, as SAIA's own scheduler starts it. Lines are
appended (O_APPEND), so concurrent requests never mix; the controller keeps
the files short by rewriting them with the recent lines only, and a line
appended during that rewrite may be lost, which only rounds demand down by one.
"""

from __future__ import annotations

import contextlib
import os

from saia.protocol.ids import SERVICE_ID

FOLDER = "demand"
KEEP_BYTES = 64 * 1024  # beyond this, the reader drops what is no longer recent


def record(state_dir: str, service: str, now: float) -> None:
    """Note a request for ``service`` (a configured service id) at ``now``."""
    folder = os.path.join(state_dir, FOLDER)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    descriptor = os.open(
        os.path.join(folder, service), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
    )
    try:
        os.write(descriptor, f"{now:.3f}\n".encode())
    finally:
        os.close(descriptor)


def recent(state_dir: str, since: float) -> dict[str, list[float]]:
    """The times of each service's requests at or after ``since``; no folder, no requests."""
    folder = os.path.join(state_dir, FOLDER)
    try:
        names = [name for name in os.listdir(folder) if SERVICE_ID.fullmatch(name)]
    except FileNotFoundError:
        return {}
    times: dict[str, list[float]] = {}
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as file:
                lines = file.read().split(b"\n")
        except OSError:
            continue
        kept = [(line, at) for line in lines if (at := _time(line)) >= since]
        if kept:
            times[name] = [at for _, at in kept]
        if sum(map(len, lines)) > KEEP_BYTES:
            _rewrite(path, [line for line, _ in kept])
    return times


def _time(line: bytes) -> float:
    try:
        return float(line)
    except ValueError:
        return float("-inf")  # an empty or damaged line is no request


def _rewrite(path: str, kept: list[bytes]) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        with open(temporary, "wb") as file:
            file.write(b"".join(line + b"\n" for line in kept))
        os.replace(temporary, path)
