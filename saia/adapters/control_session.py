"""The controller's way to the login node: its own ``session`` on the kept SSH connection.

The controller's passes are synchronous and run on their own thread; the
session client is asyncio. So a ControlSession keeps a small event loop on a
thread of its own, with one session (one channel, one entrypoint process on
the login node) opened on first use and again after it died, and ``call``
runs one request on it and waits for the whole answer. A pass and its probes
thus start no process on the login node.

Answers come back as the exit code the entrypoint means (0 for a 200, else
its ``saia-exit-code`` header), the body, and the reason it gave, so that the
Slurm and probe adapters read them as they read a command's exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paramiko

from saia.adapters.session_client import ReconnectingSession, SessionClosed, StreamReset
from saia.adapters.ssh_link import AnswerLost, LinkDown, LinkError
from saia.protocol import exits
from saia.protocol.session import EXIT_CODE_HEADER, KEEP_ALIVE


@dataclass(frozen=True, slots=True)
class Answer:
    exit_code: int  # as saia.protocol.exits has it; 0 for a 200
    body: bytes
    reason: str  # the entrypoint's reason for a refusal; "" otherwise


class ControlSession:
    def __init__(self, open_channel: Callable[[], paramiko.Channel]) -> None:
        self._loop = asyncio.new_event_loop()
        self._sessions = ReconnectingSession(open_channel)
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="saia-control-session", daemon=True
        )
        self._thread.start()

    def call(self, method: str, path: str, body: bytes = b"", *, timeout: float) -> Answer:
        """The answer to a request; LinkDown if nothing was sent, AnswerLost if it may have run."""
        future = asyncio.run_coroutine_threadsafe(self._call(method, path, body), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # resets the stream: the entrypoint stops working on it
            raise AnswerLost(f"{method} {path}: no answer within {timeout:g} s") from None

    def keep_alive(self, timeout: float) -> None:
        """The entrypoint's ``keep-alive`` on the session; LinkError unless it answers ok."""
        answer = self.call("GET", KEEP_ALIVE, timeout=timeout)
        if answer.exit_code != exits.OK or answer.body != b"ok\n":
            said = answer.reason or repr(answer.body[:80])
            raise LinkError(f"keep-alive answered exit {answer.exit_code}: {said}")

    def close(self) -> None:
        if self._loop.is_closed():
            return
        closing = asyncio.run_coroutine_threadsafe(self._sessions.aclose(), self._loop)
        # On failure, the channel dies with the connection anyway.
        with contextlib.suppress(concurrent.futures.TimeoutError, SessionClosed, OSError):
            closing.result(5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _call(self, method: str, path: str, body: bytes) -> Answer:
        try:
            client = await self._sessions.session()
        except SessionClosed as error:
            raise LinkDown(str(error)) from None
        try:
            async with await client.request(method, path, body=body) as response:
                data = await response.read()
        except (SessionClosed, StreamReset) as error:
            raise AnswerLost(f"{method} {path}: {error}") from None
        code = response.header(EXIT_CODE_HEADER)
        if code is None:
            if response.status == 200:
                return Answer(exits.OK, data, "")
            return Answer(exits.SOFTWARE, data, f"HTTP {response.status} without an exit code")
        return Answer(_exit_code(code), data, _reason(data))


def _exit_code(header: str) -> int:
    try:
        return int(header)
    except ValueError:
        return exits.SOFTWARE


def _reason(body: bytes) -> str:
    try:
        said = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip()[:500]
    return str(said)[:500]
