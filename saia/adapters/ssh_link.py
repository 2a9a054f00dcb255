"""One persistent SSH connection from the hub to the login node, a channel per command.

Opening an SSH connection costs 112-128 ms with paramiko; a new channel on a
kept connection, with TCP_NODELAY, about 5 ms (plus, here, the start-up of the
process sshd runs for it). So the link keeps one authenticated paramiko
Transport and runs every command (always the login node's forced
``saia-entrypoint``) on a fresh ``exec`` channel of it.

A background thread owns the connection's life: it connects, checks the
connection every ``keepalive_interval``, and after a failure reconnects with
capped exponential backoff. Callers never wait for that: while the link is
down, ``run`` raises LinkDown at once. The thread (and only it) reports each
change between up and down through ``on_change(up, error)``; "up" means
connected, the host key known, authenticated, and the entrypoint answering
``keep-alive`` with ``ok`` (asked once per connection). The periodic check
opens a channel and closes it again: a round trip to sshd that starts no
process on the login node. The first outcome is always reported.

The server's host key must be in the known_hosts file under ``host`` (or
``[host]:port``); an unknown or changed key is refused, never added.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.hostkeys import InvalidHostKey
from paramiko.pkey import UnknownKeyType

log = logging.getLogger(__name__)

OnChange = Callable[[bool, str], None]  # (up, error); error is "" when up

_READ_CHUNK = 64 * 1024
_NO_EXIT_STATUS = -1  # paramiko's exit_status until the server sends one


class LinkError(Exception):
    """A command could not be run over the link, or its answer did not come back."""


class LinkDown(LinkError):
    """The link is down: the command was not sent."""


class AnswerLost(LinkError):
    """The command was sent, but its answer did not come back whole: it may have run."""


class HostKeyRefused(LinkError):
    """The server's host key is not the one known_hosts names for it."""


@dataclass(frozen=True, slots=True)
class SshLinkSettings:
    host: str
    port: int
    user: str
    key_file: Path  # the hub's private key, without a passphrase
    known_hosts_file: Path
    connect_timeout: float = 10.0  # TCP connect, SSH handshake and authentication, each
    keepalive_interval: float = 15.0  # seconds between checks of the connection
    keepalive_timeout: float = 10.0  # a keep-alive slower than this counts as down
    backoff_base: float = 1.0  # wait after the first failed reconnection; doubles each time
    backoff_max: float = 60.0


@dataclass(frozen=True, slots=True)
class Completed:
    exit_code: int
    stdout: bytes
    stderr: bytes


class SshLink:
    """The kept connection; ``start()`` it, ``run`` commands from any thread, ``close()`` it."""

    def __init__(self, settings: SshLinkSettings, on_change: OnChange | None = None) -> None:
        for name in ("connect_timeout", "keepalive_interval", "keepalive_timeout",
                     "backoff_base", "backoff_max"):  # fmt: skip
            if not getattr(settings, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(settings, name)!r}")
        self.settings = settings
        self._on_change = on_change
        self._lock = threading.Lock()
        self._transport: paramiko.Transport | None = None  # set only while up
        self._down_reason = "not connected yet"
        self._reported: bool | None = None  # the last state told to on_change
        self._stop = threading.Event()
        self._wake = threading.Event()  # a heartbeat now: run() saw the transport fail
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; see ``wait_up`` to wait for the first result."""
        if self._thread is not None:
            raise RuntimeError("the link was already started")
        self._thread = threading.Thread(target=self._maintain, name="saia-ssh-link", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the keep-alive thread and close the connection; later runs raise LinkDown."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            transport, self._transport = self._transport, None
            self._down_reason = "the link was closed"
        if transport is not None:
            transport.close()

    @property
    def up(self) -> bool:
        return self._transport is not None

    def wait_up(self, timeout: float) -> bool:
        """Whether the link is up within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.up:
            if time.monotonic() >= deadline or self._stop.is_set():
                return False
            time.sleep(0.05)
        return True

    # -- commands ----------------------------------------------------------------------

    def run(self, command: str, stdin: bytes = b"", *, timeout: float) -> Completed:
        """Run ``command`` on a new channel; its exit code, stdout and stderr.

        Raises LinkDown (nothing sent) or AnswerLost (sent, outcome unknown),
        never a paramiko or socket error. A non-zero exit code is an answer,
        not an error.
        """
        transport = self._current()
        try:
            return _execute(transport, command, stdin, timeout)
        except LinkError as error:
            self._drop_if_dead(transport, str(error))
            raise

    def open_channel(self, command: str, timeout: float = 10.0) -> paramiko.Channel:
        """A new channel running ``command`` (the ``session`` verb), for the caller to keep.

        Blocks for a round trip: call it from a worker thread. LinkDown if the link
        is down or the channel cannot be opened; nothing was run then.
        """
        transport = self._current()
        channel: paramiko.Channel | None = None
        try:
            channel = transport.open_session(timeout=timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as error:
            if channel is not None:
                channel.close()
            self._drop_if_dead(transport, _why(error))
            raise LinkDown(f"cannot open a channel: {_why(error)}") from None
        return channel

    def _current(self) -> paramiko.Transport:
        """The transport in use; LinkDown at once while there is none."""
        with self._lock:
            transport, reason = self._transport, self._down_reason
        if transport is None:
            raise LinkDown(f"SSH link to {self._where()} is down: {reason}")
        return transport

    def _drop_if_dead(self, transport: paramiko.Transport, reason: str) -> None:
        if not transport.is_active():
            self._drop(transport, reason)

    # -- the keep-alive thread ----------------------------------------------------------

    def _maintain(self) -> None:
        failures = 0
        while not self._stop.is_set():
            current = self._transport
            if current is None:
                if failures and self._stop.wait(self._backoff(failures)):
                    break
                try:
                    opened = self._open()
                except LinkError as error:
                    failures += 1
                    log.warning("SSH link to %s: %s", self._where(), error)
                    with self._lock:
                        self._down_reason = str(error)  # what callers are told while down
                    self._report(False, str(error))
                    continue
                failures = 0
                with self._lock:
                    self._transport = opened
                self._report(True, "")
                continue
            self._wake.wait(self.settings.keepalive_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._transport is current:
                try:
                    self._ping(current)
                except LinkError as error:
                    self._drop(current, str(error))
            if self._transport is None:
                self._report(False, self._down_reason)

    def _backoff(self, failures: int) -> float:
        # No jitter: there is one hub per login node, no herd to spread out.
        exponent = min(failures - 1, 32)  # 2**32 s is far past any sensible backoff_max
        return float(min(self.settings.backoff_max, self.settings.backoff_base * 2**exponent))

    def _report(self, up: bool, error: str) -> None:
        if self._reported is up:
            return
        self._reported = up
        if self._on_change is None:
            return
        try:
            self._on_change(up, error)
        except Exception:  # the listener's bug must not stop the link from reconnecting
            log.exception("SSH link on_change(%s) failed", up)

    def _drop(self, transport: paramiko.Transport, reason: str) -> None:
        """Take a failed transport out of use and let the thread notice and reconnect."""
        with self._lock:
            if self._transport is not transport:
                return  # already dropped (by another caller, or replaced)
            self._transport = None
            self._down_reason = reason
        log.warning("SSH link to %s lost: %s", self._where(), reason)
        transport.close()
        self._wake.set()

    def _ping(self, transport: paramiko.Transport) -> None:
        """A round trip to sshd: a channel opened and closed without running anything."""
        try:
            channel = transport.open_session(timeout=self.settings.keepalive_timeout)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise LinkError(f"the connection does not answer: {_why(error)}") from None
        channel.close()

    def _heartbeat(self, transport: paramiko.Transport) -> None:
        answer = _execute(transport, "keep-alive", b"", self.settings.keepalive_timeout)
        if answer.exit_code != 0 or answer.stdout != b"ok\n":
            said = answer.stderr.decode("utf-8", "replace").strip() or repr(answer.stdout[:80])
            raise LinkError(f"keep-alive answered exit {answer.exit_code}: {said}")

    def _open(self) -> paramiko.Transport:
        """A new transport: connected, host key checked, authenticated, answering keep-alive."""
        settings = self.settings
        # Read at every connection, so that a fixed known_hosts needs no restart.
        try:
            key = paramiko.PKey.from_path(settings.key_file)
        except (OSError, ValueError, paramiko.SSHException, UnknownKeyType) as error:
            raise LinkError(f"cannot read the key {settings.key_file}: {_why(error)}") from None
        try:
            known = paramiko.HostKeys(settings.known_hosts_file)
        except (OSError, InvalidHostKey) as error:
            where = settings.known_hosts_file
            raise LinkError(f"cannot read known_hosts {where}: {_why(error)}") from None
        known_keys = known.lookup(self._known_hosts_name())
        if not known_keys:
            raise HostKeyRefused(
                f"no host key for {self._known_hosts_name()} in {settings.known_hosts_file}"
            )
        try:
            sock = socket.create_connection(
                (settings.host, settings.port), timeout=settings.connect_timeout
            )
        except OSError as error:
            raise LinkError(f"cannot connect: {error.strerror or error}") from None
        # Without it, each small command waits for Nagle and delayed ACKs: 48 ms, not 5 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock)
        try:
            self._handshake(transport, known_keys, key)
        except LinkError:
            transport.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as error:
            transport.close()
            raise LinkError(f"SSH handshake failed: {_why(error)}") from None
        return transport

    def _handshake(
        self, transport: paramiko.Transport, known: Mapping[str, paramiko.PKey], key: paramiko.PKey
    ) -> None:
        settings = self.settings
        transport.banner_timeout = settings.connect_timeout
        transport.handshake_timeout = settings.connect_timeout
        transport.auth_timeout = settings.connect_timeout
        # Ask for the key types known_hosts holds, or the server may show another one
        # of its keys and be refused although it is the right host.
        options = transport.get_security_options()
        options.key_types = [
            *(kind for kind in options.key_types if kind in known),
            *(kind for kind in options.key_types if kind not in known),
        ]
        transport.start_client(timeout=settings.connect_timeout)
        offered = transport.get_remote_server_key()
        expected = known.get(offered.get_name())
        if expected is None or expected != offered:
            changed = "an unknown" if expected is None else "a changed"
            raise HostKeyRefused(
                f"{changed} {offered.get_name()} host key for {self._known_hosts_name()} "
                f"(not the one in {settings.known_hosts_file})"
            )
        transport.auth_publickey(settings.user, key)
        # Also keeps NAT and firewall state alive between commands.
        transport.set_keepalive(max(1, int(settings.keepalive_interval)))
        self._heartbeat(transport)

    def _known_hosts_name(self) -> str:
        host, port = self.settings.host, self.settings.port
        return host if port == 22 else f"[{host}]:{port}"

    def _where(self) -> str:
        return f"{self.settings.user}@{self.settings.host}:{self.settings.port}"


def _execute(
    transport: paramiko.Transport, command: str, stdin: bytes, timeout: float
) -> Completed:
    deadline = time.monotonic() + timeout
    try:
        channel = transport.open_session(timeout=timeout)
    except (paramiko.SSHException, OSError, EOFError) as error:
        raise LinkDown(f"cannot open a channel: {_why(error)}") from None
    try:
        return _exchange(channel, command, stdin, deadline)
    except TimeoutError:
        raise AnswerLost(f"{_verb(command)}: no answer within {timeout:g} s") from None
    except (paramiko.SSHException, OSError, EOFError) as error:
        raise AnswerLost(f"{_verb(command)}: channel broke: {_why(error)}") from None
    finally:
        channel.close()


def _exchange(channel: paramiko.Channel, command: str, stdin: bytes, deadline: float) -> Completed:
    channel.settimeout(_remaining(deadline))
    channel.exec_command(command)
    if stdin:
        try:
            channel.sendall(stdin)
        except TimeoutError:
            raise
        except OSError:
            # The command may end without reading all of stdin (keep-alive reads none):
            # paramiko then refuses to send more, but the answer is on the channel. A
            # broken connection shows below, as an answer without an exit status.
            if not channel.closed:
                raise
    channel.shutdown_write()
    stdout = _read_all(channel.recv, channel, deadline)
    # stderr after stdout: the entrypoint writes one line there, far below the channel
    # window, so the server never blocks on it while we read stdout.
    stderr = _read_all(channel.recv_stderr, channel, deadline)
    if not channel.status_event.wait(_remaining(deadline)):
        raise TimeoutError
    if channel.exit_status == _NO_EXIT_STATUS:
        raise EOFError("the channel closed without an exit status")
    return Completed(channel.exit_status, stdout, stderr)


def _read_all(recv: Callable[[int], bytes], channel: paramiko.Channel, deadline: float) -> bytes:
    parts: list[bytes] = []
    while True:
        channel.settimeout(_remaining(deadline))
        chunk = recv(_READ_CHUNK)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _verb(command: str) -> str:
    return command.split(" ", 1)[0][:40]


def _why(error: BaseException) -> str:
    # Some of paramiko's errors (EOFError on a closed socket) have no message at all.
    return str(error) or type(error).__name__
