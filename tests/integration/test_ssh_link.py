"""SshLink and RemoteSlurm over the real dev sshd, its forced-command key and the real Slurm.

The entrypoint's configuration and the ssh CLI's view of the key come from the
entrypoint tests' ``link`` fixture. Tests that cut the link kill the dev sshd
and restart it with ``scripts/dev-cluster up``: run them alone, not while
someone else uses the dev cluster's sshd.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from saia.adapters.control_session import ControlSession
from saia.adapters.slurm_remote import RemoteSlurm, ServiceMismatch
from saia.adapters.ssh_link import Completed, LinkDown, SshLink, SshLinkSettings
from saia.domain.slurm import SlurmJob
from saia.ports import SubmitRequest
from tests.integration.test_entrypoint_ssh import (  # the entrypoint's config and the key
    REPO,
    SERVICE,
    Link,
    link,  # noqa: F401 (a fixture, used by name)
    new_port,
    write_config,
)

pytestmark = [pytest.mark.ssh, pytest.mark.slurm]


class Changes:
    """Records on_change calls and lets a test wait for the next state."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, str]] = []
        self._changed = threading.Condition()

    def __call__(self, up: bool, error: str) -> None:
        with self._changed:
            self.seen.append((up, error))
            self._changed.notify_all()

    def wait_for(self, up: bool, timeout: float = 20.0) -> str:
        """Wait until the latest report is ``up``; its error."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: bool(self.seen) and self.seen[-1][0] is up, timeout=timeout
            )
            assert ok, f"the link did not report up={up} within {timeout:g} s: {self.seen}"
            return self.seen[-1][1]


def settings_for(key: Link, **overrides: object) -> SshLinkSettings:
    """Settings for the dev sshd, with short intervals so that tests see changes quickly."""
    values: dict[str, object] = {
        "host": key.host,
        "port": int(key.port),
        "user": key.user,
        "key_file": Path(key.key),
        "known_hosts_file": Path(key.known_hosts),
        "connect_timeout": 5.0,
        "keepalive_interval": 0.5,
        "keepalive_timeout": 5.0,
        "backoff_base": 0.2,
        "backoff_max": 1.0,
        **overrides,
    }
    return SshLinkSettings(**values)  # type: ignore[arg-type]


@contextmanager
def started(settings: SshLinkSettings) -> Iterator[tuple[SshLink, Changes]]:
    changes = Changes()
    ssh = SshLink(settings, changes)
    ssh.start()
    try:
        yield ssh, changes
    finally:
        ssh.close()


@pytest.fixture
def ssh(link: Link) -> Iterator[tuple[SshLink, Changes]]:  # noqa: F811 (the imported fixture)
    """A started link to the dev sshd, up."""
    with started(settings_for(link)) as (kept, changes):
        assert changes.wait_for(True) == ""
        yield kept, changes


# -- cutting the link: the dev sshd and the processes serving our connections --------


def _ss_established() -> list[tuple[str, str, str]]:
    """(local address, peer address, processes) of established TCP connections."""
    out = subprocess.run(
        ["ss", "-H", "-t", "-n", "-p", "state", "established"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    rows = []
    for line in out.splitlines():
        fields = line.split()
        # With a state filter, ss leaves the state column out: Recv-Q Send-Q Local Peer [users]
        if len(fields) >= 4:
            rows.append((fields[2], fields[3], " ".join(fields[4:])))
    return rows


def our_connections(port: int) -> list[str]:
    """Local addresses of this process's connections to the sshd port."""
    mine = f"pid={os.getpid()},"
    return [local for local, peer, users in _ss_established()
            if peer.endswith(f":{port}") and mine in users]  # fmt: skip


def serving_pids(port: int) -> set[int]:
    """The sshd processes at the other end of this process's connections."""
    ours = {local for local in our_connections(port)}
    return {
        int(pid)
        for local, peer, users in _ss_established()
        if local.endswith(f":{port}") and peer in ours
        for pid in re.findall(r"pid=(\d+)", users)
    }


def _alive(pid: int) -> bool:
    # Dead daemons may linger as zombies here (PID 1 reaps late): kill -0 is not enough.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _sshd_pid_file() -> Path:
    dev_dir = os.environ.get("SAIA_DEV_DIR")
    if not dev_dir:
        pytest.skip("needs SAIA_DEV_DIR (source the dev cluster's env file) to find sshd's pid")
    return Path(dev_dir) / "run" / "sshd.pid"


@contextmanager
def sshd_stopped(port: int) -> Iterator[None]:
    """The dev sshd stopped, and the sessions serving this process with it; restarted after.

    Killing the listening sshd alone cuts nothing: each connection has its own
    sshd processes, which live on. So the ones at the far end of this process's
    own connections go too (found by their ports, killed by pid); other clients'
    sessions are left alone.
    """
    pid_file = _sshd_pid_file()
    listener = int(pid_file.read_text().strip())
    victims = [listener, *sorted(serving_pids(port))]
    for pid in victims:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in victims):
        assert time.monotonic() < deadline, f"sshd processes {victims} did not stop"
        time.sleep(0.05)
    try:
        yield
    finally:
        restarted = subprocess.run(
            [str(REPO / "scripts" / "dev-cluster"), "up"],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert restarted.returncode == 0, restarted.stderr


# -- the kept connection -----------------------------------------------------------


def test_keep_alive_runs_over_the_kept_connection(ssh: tuple[SshLink, Changes]) -> None:
    """run('keep-alive') answers ok, and the link reported up exactly once."""
    kept, changes = ssh
    assert kept.run("keep-alive", timeout=10) == Completed(0, b"ok\n", b"")
    assert changes.seen == [(True, "")]


def test_a_refusal_is_an_answer_not_an_error(ssh: tuple[SshLink, Changes]) -> None:
    """An unknown verb comes back as exit 64 with the entrypoint's reason; the link stays up."""
    kept, changes = ssh
    answer = kept.run("reboot", timeout=10)
    assert answer.exit_code == 64 and answer.stderr.startswith(b"saia-entrypoint: ")
    assert kept.up and changes.seen == [(True, "")]


def test_stdin_the_command_never_reads_does_not_lose_the_answer(
    ssh: tuple[SshLink, Changes],
) -> None:
    """Four megabytes on stdin of a verb that exits without reading it: the answer still counts."""
    kept, _ = ssh
    answer = kept.run("keep-alive", b"x" * (4 * 1024 * 1024), timeout=20)
    assert (answer.exit_code, answer.stdout) == (0, b"ok\n")


def test_latency_of_sequential_keep_alives(ssh: tuple[SshLink, Changes]) -> None:
    """50 keep-alives in a row on the kept connection all answer; prints the median."""
    kept, _ = ssh
    took = []
    for _ in range(50):
        began = time.perf_counter()
        answer = kept.run("keep-alive", timeout=10)
        took.append(time.perf_counter() - began)
        assert answer.exit_code == 0
    median, fastest, slowest = statistics.median(took), min(took), max(took)
    print(f"\nkeep-alive over the kept link, 50 calls: median {median * 1e3:.1f} ms "
          f"(min {fastest * 1e3:.1f}, max {slowest * 1e3:.1f})")  # fmt: skip


def test_concurrent_runs_share_one_connection(ssh: tuple[SshLink, Changes]) -> None:
    """Twenty threads running at once all get their answer, over one TCP connection."""
    kept, _ = ssh
    answers: list[Completed] = []

    def one() -> None:
        answers.append(kept.run("keep-alive", timeout=20))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answer.stdout for answer in answers] == [b"ok\n"] * 20
    assert len(our_connections(kept.settings.port)) == 1


def test_close_stops_the_thread_and_the_connection(link: Link) -> None:  # noqa: F811
    """After close(), run raises LinkDown and no connection is left open."""
    settings = settings_for(link)
    with started(settings) as (kept, changes):
        changes.wait_for(True)
    with pytest.raises(LinkDown):
        kept.run("keep-alive", timeout=5)
    assert not [thread for thread in threading.enumerate() if thread.name == "saia-ssh-link"]
    deadline = time.monotonic() + 5
    while our_connections(settings.port):
        assert time.monotonic() < deadline, "the connection stayed open after close()"
        time.sleep(0.05)


# -- host keys ---------------------------------------------------------------------


def _other_ed25519_key(folder: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "other")],
        check=True, timeout=30,
    )  # fmt: skip
    return (folder / "other.pub").read_text().split()[1]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[127.0.0.1]:2222 ssh-ed25519 {other}", "a changed ssh-ed25519 host key"),
        ("[127.0.0.2]:2222 ssh-ed25519 {known}", "no host key for [127.0.0.1]:2222"),
        ("127.0.0.1 ssh-ed25519 {known}", "no host key for [127.0.0.1]:2222"),
    ],
    ids=["changed-key", "other-host", "other-port"],
)
def test_a_host_key_not_in_known_hosts_is_refused(
    link: Link, tmp_path: Path, line: str, problem: str,  # noqa: F811
) -> None:
    """A changed key, or no entry for this host and port, keeps the link down: never added."""
    if (link.host, link.port) != ("127.0.0.1", "2222"):
        pytest.skip("the known_hosts lines here are written for 127.0.0.1:2222")
    known_key = Path(link.known_hosts).read_text().split()[2]
    known_hosts = tmp_path / "known_hosts"
    text = line.format(other=_other_ed25519_key(tmp_path), known=known_key) + "\n"
    known_hosts.write_text(text)
    with started(settings_for(link, known_hosts_file=known_hosts)) as (kept, changes):
        error = changes.wait_for(False)
        assert problem in error
        with pytest.raises(LinkDown, match="is down"):
            kept.run("keep-alive", timeout=5)
        assert not kept.up
    assert known_hosts.read_text() == text


def test_a_broken_entrypoint_counts_as_down_until_fixed(
    ssh: tuple[SshLink, Changes], link: Link,  # noqa: F811
) -> None:
    """keep-alive failing (a bad login-node config, exit 78) reports down with the reason."""
    kept, changes = ssh
    write_config(link, port_min='"low"')
    try:
        error = changes.wait_for(False)
        assert "keep-alive answered exit 78" in error and "port_min" in error
        with pytest.raises(LinkDown, match="port_min"):
            kept.run("jobs", timeout=10)
    finally:
        write_config(link)
    assert changes.wait_for(True) == ""
    assert kept.run("keep-alive", timeout=10).exit_code == 0


# -- a cut link ----------------------------------------------------------------------


def test_the_link_survives_an_sshd_restart(ssh: tuple[SshLink, Changes]) -> None:
    """Killed sshd: down is reported and run fails at once; restarted: up again, runs work."""
    kept, changes = ssh
    with sshd_stopped(kept.settings.port):
        error = changes.wait_for(False)
        assert error
        began = time.monotonic()
        with pytest.raises(LinkDown, match="is down"):
            kept.run("keep-alive", timeout=30)
        assert time.monotonic() - began < 1.0, "LinkDown must come at once, not after a timeout"
        time.sleep(2.0)  # a few reconnection attempts against a closed port
        assert not kept.up and changes.seen[-1][0] is False
    assert changes.wait_for(True) == ""
    assert kept.run("keep-alive", timeout=10) == Completed(0, b"ok\n", b"")
    assert [up for up, _ in changes.seen] == [True, False, True]


# -- RemoteSlurm through the entrypoint ----------------------------------------------


@pytest.fixture
def control(ssh: tuple[SshLink, Changes]) -> Iterator[ControlSession]:
    """The controller's session on the kept connection, as saia serve opens it."""
    session = ControlSession(lambda: ssh[0].open_channel("session"))
    yield session
    session.close()


def entrypoint_pids_seen(port: int, seconds: float) -> set[int]:
    """The saia-entrypoint processes serving this process's connections, alive at any of
    many looks over ``seconds``."""
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        serving = serving_pids(port)
        for entry in Path("/proc").iterdir():
            try:
                ours = entry.name.isdigit() and _descends_from(int(entry.name), serving)
                if ours and b"saia-entrypoint" in (entry / "cmdline").read_bytes():
                    seen.add(int(entry.name))
            except OSError:
                continue  # ended meanwhile
        time.sleep(0.01)
    return seen


def _descends_from(pid: int, ancestors: set[int]) -> bool:
    while pid > 1:
        if pid in ancestors:
            return True
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rpartition(")")[2].split()[1])
    return False


@pytest.mark.parametrize("over_the_session", [True, False])
def test_keep_alives_over_the_session_start_no_process(link: Link, over_the_session: bool) -> None:  # noqa: F811
    """With check_with (as saia serve wires it), the periodic keep-alive is a request on the
    kept session: the login node runs one entrypoint process throughout, not one per check."""
    with started(settings_for(link, keepalive_interval=0.1)) as (kept, changes):
        assert changes.wait_for(True) == ""
        control = ControlSession(lambda: kept.open_channel("session"))
        try:
            checks: list[float] = []

            def keep_alive() -> None:
                checks.append(time.monotonic())
                control.keep_alive(timeout=5.0)

            if over_the_session:
                kept.check_with(keep_alive)
            control.keep_alive(timeout=5.0)  # the session's process is running
            seen = entrypoint_pids_seen(int(link.port), 2.0)
        finally:
            control.close()
        assert changes.seen == [(True, "")]
    if over_the_session:
        assert len(checks) >= 10 and len(seen) == 1
    else:
        assert len(seen) >= 5  # the check the test would miss: a process per keep-alive


def test_a_failing_keep_alive_check_drops_the_connection_and_a_bug_in_it_too(link: Link) -> None:  # noqa: F811
    """The check given by check_with decides up and down; one that raises anything else
    than LinkError counts as a failed keep-alive, and the link's thread goes on."""
    with started(settings_for(link, keepalive_interval=0.2)) as (kept, changes):
        assert changes.wait_for(True) == ""
        failing = [True]

        def check() -> None:
            if failing[0]:
                raise RuntimeError("a bug")

        kept.check_with(check)
        assert "keep-alive failed (RuntimeError)" in changes.wait_for(False)
        failing[0] = False
        assert changes.wait_for(True) == ""


def _listed(slurm: RemoteSlurm, job_id: str) -> SlurmJob | None:
    return next((job for job in slurm.jobs() if job.job_id == job_id), None)


def test_remote_slurm_submits_lists_and_cancels(control: ControlSession) -> None:
    """submit starts the configured script, jobs lists it, a retry finds it, cancel ends it."""
    slurm = RemoteSlurm(control, timeout=60)
    port, token = new_port(), secrets.token_hex(8)
    # As the login node's configuration has it (write_config): the hub's spec must agree.
    request = SubmitRequest(SERVICE, "testservice.sbatch", port, token, 5 * 60.0)
    job_id = slurm.submit(request)
    try:
        seen = _listed(slurm, job_id)
        assert seen is not None
        assert (seen.service, seen.token, seen.port) == (SERVICE, token, port)
        assert slurm.submit(request) == job_id  # the retry of a lost answer starts nothing
        slurm.cancel(job_id)
        deadline = time.monotonic() + 30
        while (seen := _listed(slurm, job_id)) is not None and seen.final is None:
            assert time.monotonic() < deadline, f"job {job_id} did not end: {seen}"
            time.sleep(0.3)
        slurm.cancel(job_id)  # again: nothing left to cancel is not an error
    finally:
        slurm.cancel(job_id)


def test_remote_slurm_refusals_raise_the_ports_errors(control: ControlSession) -> None:
    """A service the login node lacks, or runs otherwise than the hub's spec says, is refused
    before it is submitted, saying how the two disagree."""
    slurm = RemoteSlurm(control, timeout=60)
    port, token = new_port(), secrets.token_hex(8)
    for request, problem in (
        (SubmitRequest("not-configured", "x.sbatch", port, token, 60.0),
         "'not-configured' is not configured on the login node"),
        (SubmitRequest(SERVICE, "vllm.sbatch", port, token, 5 * 60.0),
         "runs testservice.sbatch on the login node, not vllm.sbatch"),
        (SubmitRequest(SERVICE, "testservice.sbatch", port, token, 60.0),
         "time_limit = 5 on the login node, job_expiry_time = 1 on the hub"),
    ):  # fmt: skip
        with pytest.raises(ServiceMismatch) as raised:
            slurm.submit(request)
        assert problem in str(raised.value)
    slurm.cancel("4000000000")  # a job nobody has: nothing of saia's to cancel
