"""The one error a verb raises: it refuses, nothing was changed, and here is the exit code."""

from __future__ import annotations


class Refusal(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
