"""An exclusive lock that dies with its holder: flock(2) on a file.

The kernel drops a flock when the process that holds it exits, however it
exits, so a crashed controller never wedges the next one (unlike a lock file
whose existence is the lock).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType


class LockTimeout(Exception):
    def __init__(self, path: Path, seconds: float) -> None:
        super().__init__(f"{path}: held by another process for {seconds:.0f} s")
        self.path = path


class FileLock:
    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not blocking:
                    os.close(fd)
                    return False
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeout(self.path, self.timeout) from None
                time.sleep(0.05)
                continue
            self._fd = fd
            return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
