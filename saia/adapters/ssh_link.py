"""One persistent SSH connection from the hub to the login node, and channels on it.

Opening an SSH connection costs 112-128 ms with paramiko; a new channel on a
kept connection, with TCP_NODELAY, about 5 ms (plus the start-up of the process
sshd runs for it, always the login node's forced ``saia-entrypoint``). So the
link keeps one authenticated paramiko Transport; the hub opens its few
long-lived ``session`` channels on it (``open_channel``), and ``run`` runs a
single command on a channel of its own.

A background thread owns the connection's life: it connects, asks the
entrypoint ``keep-alive`` every ``keepalive_interval``, and after a failure
reconnects with capped exponential backoff. Callers never wait for that: while
the link is down, ``run`` raises LinkDown at once. The thread (and only it)
reports each change between up and down through ``on_change(up, error)``; "up"
means connected, the host key known, authenticated, and the entrypoint
answering ``keep-alive`` with ``ok``. The first outcome is always reported.
A new connection is checked with the ``keep-alive`` verb on a channel of its
own; later checks go through ``check_with`` when one is given (the hub asks on
its kept session), so that no process is started on the login node for them.

The connection is opened with fabric's Connection, so that the operator's
ssh_config (Host aliases, HostName, Port, User, IdentityFile, ProxyJump) is
read as ssh reads it, and login nodes behind jump hosts are reached; the
commands then run on the login node's paramiko Transport, as before. Every
server's host key, jump hosts' too, must be in the known_hosts file under its
``host`` (or ``[host]:port``); an unknown or changed key is refused, never added.
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fabric
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
    host: str  # a name, an address, or a Host alias of ssh_config
    port: int | None  # None: ssh_config's Port, else 22
    user: str | None  # None: ssh_config's User, else the local user
    key_file: Path | None  # the hub's private key, without a passphrase; None: IdentityFile only
    known_hosts_file: Path  # checked for the login node and every jump host
    connect_timeout: float = 10.0  # TCP connect, SSH handshake and authentication, each
    keepalive_interval: float = 15.0  # seconds between keep-alives
    keepalive_timeout: float = 10.0  # a keep-alive slower than this counts as down
    backoff_base: float = 1.0  # wait after the first failed reconnection; doubles each time
    backoff_max: float = 60.0
    # The operator's ssh_config: Host aliases, HostName, Port, User, IdentityFile and
    # ProxyJump are honoured; settings given here win over it, as ssh's options do.
    ssh_config: Path | None = None
    jump_host: str = ""  # "[user@]host[:port]" to go through, as ``ssh -J``; wins over ProxyJump


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
        self._check: Callable[[], None] | None = None

    def check_with(self, keep_alive: Callable[[], None]) -> None:
        """Ask keep-alive this way from now on; it raises LinkError unless the answer is ok."""
        self._check = keep_alive

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
                    self._keep_alive(current)
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

    def _keep_alive(self, transport: paramiko.Transport) -> None:
        if self._check is None:
            self._heartbeat(transport)
            return
        try:
            self._check()
        except LinkError:
            raise
        except Exception as error:  # the check's bug must not end this thread
            raise LinkError(f"keep-alive failed ({type(error).__name__})") from error

    def _heartbeat(self, transport: paramiko.Transport) -> None:
        answer = _execute(transport, "keep-alive", b"", self.settings.keepalive_timeout)
        if answer.exit_code != 0 or answer.stdout != b"ok\n":
            said = answer.stderr.decode("utf-8", "replace").strip() or repr(answer.stdout[:80])
            raise LinkError(f"keep-alive answered exit {answer.exit_code}: {said}")

    def _open(self) -> paramiko.Transport:
        """A new transport: connected, host keys checked, authenticated, answering keep-alive."""
        settings = self.settings
        # Read at every connection, so that a fixed key, known_hosts or ssh_config needs
        # no restart. The key is read here only for a clear error; paramiko reads it again.
        if settings.key_file is not None:
            try:
                paramiko.PKey.from_path(settings.key_file)
            except (OSError, ValueError, paramiko.SSHException, UnknownKeyType) as error:
                raise LinkError(f"cannot read the key {settings.key_file}: {_why(error)}") from None
        hops = self._hops()
        try:
            for hop in hops:
                self._connect(hop)
            transport: paramiko.Transport = hops[-1].transport
            self._heartbeat(transport)
        except LinkError:
            _close_all(hops)
            raise
        except (paramiko.SSHException, OSError, EOFError) as error:
            _close_all(hops)
            raise LinkError(f"SSH handshake failed: {_why(error)}") from None
        return transport

    def _hops(self) -> list[fabric.Connection]:
        """The connections to make, the hub's first: jump hosts, then the login node."""
        settings = self.settings
        # Without an ssh_config of its own the hub reads none: not root's ~/.ssh/config,
        # nor /etc/ssh/ssh_config, nor fabric's or invoke's files (lazy).
        ssh_config = paramiko.SSHConfig()
        if settings.ssh_config is not None:
            try:
                ssh_config = paramiko.SSHConfig.from_path(settings.ssh_config)
            except (OSError, paramiko.SSHException) as error:
                where = settings.ssh_config
                raise LinkError(f"cannot read ssh_config {where}: {_why(error)}") from None
        timeout = settings.connect_timeout
        options: dict[str, object] = {
            "look_for_keys": False,  # only key_file and IdentityFile; never ~/.ssh/id_*
            "allow_agent": False,  # nor an agent's keys: the hub has one identity
            "banner_timeout": timeout,
            "auth_timeout": timeout,
            "channel_timeout": timeout,  # opening a jump host's direct-tcpip channel
        }
        if settings.key_file is not None:
            options["key_filename"] = [str(settings.key_file)]
        # Jump hosts made from ProxyJump get a clone of this config: they use the same
        # key, timeouts and (their own Host blocks in) ssh_config.
        config = fabric.Config(
            ssh_config=ssh_config,
            lazy=True,
            overrides={
                "connect_kwargs": options,
                # fabric makes an int of it, and 0 would mean no timeout at all.
                "timeouts": {"connect": max(1, math.ceil(timeout))},
            },
        )
        jump = (
            fabric.Connection(settings.jump_host, config=config.clone())
            if settings.jump_host
            else None
        )
        login = fabric.Connection(
            settings.host, user=settings.user, port=settings.port, config=config, gateway=jump
        )
        hops = [login]
        while isinstance(hops[-1].gateway, fabric.Connection):
            hops.append(hops[-1].gateway)
        if hops[-1].gateway:
            # ProxyCommand runs an ssh of its own, which checks the next host's key
            # against its own known_hosts, not against known_hosts_file.
            raise LinkError(
                f"ssh_config {settings.ssh_config} gives {hops[-1].original_host} a ProxyCommand, "
                "which saia does not run: use ProxyJump"
            )
        hops.reverse()
        if len(hops) > 1:
            login.connect_kwargs["transport_factory"] = functools.partial(
                _ThroughJumpHosts, jump_hosts=[hop.client for hop in hops[:-1]]
            )
        return hops

    def _connect(self, hop: fabric.Connection) -> None:
        """Connects one hop (through the ones before it), its host key checked."""
        settings = self.settings
        name = _known_hosts_name(hop.host, hop.port)
        client: paramiko.SSHClient = hop.client
        # fabric's client adds unknown keys (AutoAddPolicy): refuse them instead. The
        # "system" host keys are never written back to the file, unlike load_host_keys.
        client.set_missing_host_key_policy(_Refuse(settings.known_hosts_file))
        try:
            client.load_system_host_keys(str(settings.known_hosts_file))
        except (OSError, InvalidHostKey) as error:
            where = settings.known_hosts_file
            raise LinkError(f"cannot read known_hosts {where}: {_why(error)}") from None
        # paramiko asks the server for the key type known_hosts holds for `name`, so a
        # host with several keys is not refused for showing another one.
        try:
            hop.open()
        except paramiko.BadHostKeyException as error:
            offered = error.key.get_name()
            changed = "a changed" if error.expected_key.get_name() == offered else "an unknown"
            raise HostKeyRefused(
                f"{changed} {offered} host key for {name} "
                f"(not the one in {settings.known_hosts_file})"
            ) from None
        except OSError as error:  # refused, unreachable, timed out (SSHException is none)
            raise LinkError(f"cannot connect to {name}: {error.strerror or _why(error)}") from None
        transport: paramiko.Transport = hop.transport
        if isinstance(transport.sock, socket.socket):
            # Without it, each small command waits for Nagle and delayed ACKs: 48 ms, not
            # 5 ms. A hop behind a jump host has a paramiko Channel for a socket: its bytes
            # ride the first hop's TCP connection (set here), and the jump host's sshd owns
            # the TCP connection onwards, and its options.
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Also keeps NAT and firewall state alive between commands, on every hop.
        transport.set_keepalive(max(1, int(settings.keepalive_interval)))

    def _where(self) -> str:
        user, port = self.settings.user, self.settings.port
        return f"{user + '@' if user else ''}{self.settings.host}{f':{port}' if port else ''}"


class _Refuse(paramiko.MissingHostKeyPolicy):
    """A host that known_hosts has no key for is refused (paramiko's policies add or warn)."""

    def __init__(self, known_hosts_file: Path) -> None:
        self.known_hosts_file = known_hosts_file

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyRefused(f"no host key for {hostname} in {self.known_hosts_file}")


class _ThroughJumpHosts(paramiko.Transport):
    """The login node's transport behind jump hosts; closing it closes theirs too.

    SshLink closes the one transport it uses; without this the jump hosts'
    connections, idle, would outlive it, one more after each reconnection.
    """

    def __init__(
        self, sock: paramiko.Channel, *, jump_hosts: Sequence[paramiko.SSHClient], **kwargs: Any
    ) -> None:
        super().__init__(sock, **kwargs)
        self._jump_hosts = jump_hosts

    def close(self) -> None:
        super().close()
        for client in self._jump_hosts:
            client.close()


def _close_all(hops: Sequence[fabric.Connection]) -> None:
    # The client, not the Connection: fabric closes only a hop that finished connecting.
    for hop in reversed(hops):
        hop.client.close()


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


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
