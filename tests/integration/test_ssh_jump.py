"""SshLink through a jump host, and with the operator's ssh_config, over real sshds.

The jump host is a second sshd that these tests start on a free port, with its
own host key and the hub's key allowed to forward to the dev sshd only; the
login node behind it is the dev cluster's sshd with its forced command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from saia.adapters.ssh_link import Completed, LinkDown
from tests.integration.test_entrypoint_ssh import (  # the entrypoint's config and the key
    Link,
    link,  # noqa: F401 (a fixture, used by name)
    write_config,
)
from tests.integration.test_ssh_link import our_connections, settings_for, started

pytestmark = [pytest.mark.ssh, pytest.mark.slurm]


@dataclass(frozen=True)
class JumpHost:
    port: int
    host_key: str  # "ssh-ed25519 AAAA...", for known_hosts lines


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _sshd_config(folder: Path, port: int) -> str:
    # As scripts/dev-cluster writes its own, but with forwarding on: a jump host's job.
    return f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {folder / "host_key"}
PidFile {folder / "sshd.pid"}
AuthorizedKeysFile {folder / "authorized_keys.%u"}
AllowUsers saia
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding local
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PermitUserRC no
PrintMotd no
LogLevel VERBOSE
"""


def _stop(listener: subprocess.Popen[bytes]) -> None:
    """The listener and the sessions it forked (they call setsid, so no process group)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == listener.pid:
            children.append(int(stat.parent.name))
    for pid in children:
        with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
            os.kill(pid, signal.SIGTERM)
    listener.terminate()
    listener.wait(timeout=10)


@pytest.fixture(scope="module")
def jump(link: Link) -> Iterator[JumpHost]:  # noqa: F811 (the imported fixture)
    """A second sshd, the jump host: the hub's key may only forward to the dev sshd."""
    if not Path("/usr/sbin/sshd").exists() or os.geteuid() != 0:
        pytest.skip("needs /usr/sbin/sshd and root, to start a jump host")
    # Not under pytest's tmp_path (mode 700): sshd reads the keys as the user saia.
    folder = Path(tempfile.mkdtemp(prefix="saia-jump-"))
    folder.chmod(0o755)
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key")],
            check=True, timeout=30,
        )  # fmt: skip
        hub_key = subprocess.run(
            ["ssh-keygen", "-y", "-f", link.key], capture_output=True, text=True,
            check=True, timeout=30,
        ).stdout.split()[:2]  # fmt: skip
        forward = f'port-forwarding,permitopen="{link.host}:{link.port}"'
        options = f'restrict,{forward},command="/bin/false"'  # a jump host, nothing else
        (folder / "authorized_keys.saia").write_text(f"{options} {' '.join(hub_key)} saia-hub\n")
        port = _free_port()
        (folder / "sshd_config").write_text(_sshd_config(folder, port))
        with (folder / "sshd.log").open("wb") as log:
            listener = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    log_text = (folder / "sshd.log").read_text()
                    assert listener.poll() is None, f"the jump sshd exited: {log_text}"
                    assert time.monotonic() < deadline, f"the jump sshd is silent: {log_text}"
                    time.sleep(0.05)
            host_key = " ".join((folder / "host_key.pub").read_text().split()[:2])
            yield JumpHost(port, host_key)
        finally:
            _stop(listener)
    finally:
        shutil.rmtree(folder)


def _known_hosts(folder: Path, link: Link, *extra: str) -> Path:  # noqa: F811
    """The dev sshd's known_hosts, with ``extra`` lines."""
    path = folder / "known_hosts"
    path.write_text(Path(link.known_hosts).read_text() + "".join(f"{line}\n" for line in extra))
    return path


def _wait_closed(port: int) -> None:
    deadline = time.monotonic() + 5
    while our_connections(port):
        assert time.monotonic() < deadline, f"a connection to port {port} stayed open"
        time.sleep(0.05)


def test_the_link_goes_through_a_jump_host(
    link: Link, jump: JumpHost, tmp_path: Path,  # noqa: F811
) -> None:
    """With jump_host, commands run and a session channel opens, over the jump host's TCP only."""
    known = _known_hosts(tmp_path, link, f"[127.0.0.1]:{jump.port} {jump.host_key}")
    settings = settings_for(link, known_hosts_file=known, jump_host=f"saia@127.0.0.1:{jump.port}")
    with started(settings) as (kept, changes):
        assert changes.wait_for(True) == ""
        assert kept.run("keep-alive", timeout=10) == Completed(0, b"ok\n", b"")
        channel = kept.open_channel("session")
        try:
            assert channel.active and not channel.closed
        finally:
            channel.close()
        assert len(our_connections(jump.port)) == 1
        assert our_connections(int(link.port)) == []  # no direct connection to the login node
    _wait_closed(jump.port)  # closing the link closed the jump host's connection too


@pytest.mark.parametrize("known", ["absent", "changed"])
def test_a_jump_host_key_not_in_known_hosts_is_refused(
    link: Link, jump: JumpHost, tmp_path: Path, known: str,  # noqa: F811
) -> None:
    """An unknown or changed jump-host key keeps the link down; known_hosts is left alone."""
    problem = f"no host key for [127.0.0.1]:{jump.port}"
    lines = []
    if known == "changed":
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
            check=True, timeout=30,
        )  # fmt: skip
        other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
        lines.append(f"[127.0.0.1]:{jump.port} {other}")
        problem = f"a changed ssh-ed25519 host key for [127.0.0.1]:{jump.port}"
    known_hosts = _known_hosts(tmp_path, link, *lines)
    text = known_hosts.read_text()
    settings = settings_for(
        link, known_hosts_file=known_hosts, jump_host=f"saia@127.0.0.1:{jump.port}"
    )
    with started(settings) as (kept, changes):
        assert problem in changes.wait_for(False)
        with pytest.raises(LinkDown, match="is down"):
            kept.run("keep-alive", timeout=5)
    assert known_hosts.read_text() == text
    _wait_closed(jump.port)


def test_proxy_jump_and_host_aliases_of_ssh_config(
    link: Link, jump: JumpHost, tmp_path: Path,  # noqa: F811
) -> None:
    """ssh_config's ProxyJump to an alias is followed, with each alias's HostName, Port, User."""
    (tmp_path / "ssh_config").write_text(f"""\
Host login-alias
    HostName {link.host}
    Port {link.port}
    User {link.user}
    IdentityFile {link.key}
    ProxyJump jump-alias
Host jump-alias
    HostName 127.0.0.1
    Port {jump.port}
    User saia
    IdentityFile {link.key}
""")
    known = _known_hosts(tmp_path, link, f"[127.0.0.1]:{jump.port} {jump.host_key}")
    settings = settings_for(
        link, host="login-alias", port=None, user=None, key_file=None,
        known_hosts_file=known, ssh_config=tmp_path / "ssh_config",
    )  # fmt: skip
    with started(settings) as (kept, changes):
        assert changes.wait_for(True) == ""
        assert kept.run("keep-alive", timeout=10).stdout == b"ok\n"
        assert len(our_connections(jump.port)) == 1
        assert our_connections(int(link.port)) == []
    _wait_closed(jump.port)


def test_a_host_alias_of_ssh_config_is_used(link: Link, tmp_path: Path) -> None:  # noqa: F811
    """Only the alias is set: HostName, Port, User and IdentityFile all come from ssh_config."""
    # Without its User (the local user is not allowed) or its IdentityFile (no other
    # key is tried) the link would not come up.
    (tmp_path / "ssh_config").write_text(f"""\
Host login-alias
    HostName {link.host}
    Port {link.port}
    User {link.user}
    IdentityFile {link.key}
""")
    settings = settings_for(
        link, host="login-alias", port=None, user=None, key_file=None,
        ssh_config=tmp_path / "ssh_config",
    )  # fmt: skip
    with started(settings) as (kept, changes):
        assert changes.wait_for(True) == ""
        assert kept.run("keep-alive", timeout=10) == Completed(0, b"ok\n", b"")
        assert len(our_connections(int(link.port))) == 1


def test_reconnections_through_a_jump_host_leave_no_connection_behind(
    link: Link, jump: JumpHost, tmp_path: Path,  # noqa: F811
) -> None:
    """A login node failing keep-alive is dropped and retried; each retry's jump connection ends."""
    known = _known_hosts(tmp_path, link, f"[127.0.0.1]:{jump.port} {jump.host_key}")
    settings = settings_for(link, known_hosts_file=known, jump_host=f"saia@127.0.0.1:{jump.port}")
    with started(settings) as (kept, changes):
        assert changes.wait_for(True) == ""
        write_config(link, port_min='"low"')
        try:
            assert "keep-alive answered exit 78" in changes.wait_for(False)
            time.sleep(3.0)  # several reconnections, backoff 0.2 s to 1 s
            assert len(our_connections(jump.port)) <= 1
        finally:
            write_config(link)
        assert changes.wait_for(True) == ""
        assert len(our_connections(jump.port)) == 1
        assert kept.run("keep-alive", timeout=10).exit_code == 0
    _wait_closed(jump.port)
