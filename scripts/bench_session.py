#!/usr/bin/env python3
"""Session figures over the real sshd and the real Slurm dev cluster (issue 4).

    .venv/bin/python scripts/bench_session.py [--rounds 5] [--requests 200] [--forwards 20]

Needs the dev cluster with its sshd and the forced-command key (source the env
file `scripts/dev-cluster env` names), and an entrypoint that serves
``session``. Starts one test service job through the ``submit`` verb, then
sends the same small request (GET /health) three ways, interleaved in rounds
so that drift hits all three alike:

- direct: from the hub to the job's port with httpx (keep-alive), the baseline;
- session: as GET /jobs/<id>/http/health on one session channel;
- forward: on a new channel per request (the ``forward`` verb) of the same kept
  SSH connection, for comparison.

Latency is per request, sent one after the other, until the whole body is read.
Login-node CPU is the utime+stime of the processes that serve this SSH
connection (sshd's monitor and its session process, and every entrypoint under
them; children that ended count through cutime+cstime), from /proc/<pid>/stat
before and after each batch, divided by the batch's requests.

Prints a Markdown table and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paramiko

from saia.adapters.channel_stream import ChannelByteStream
from saia.adapters.session_client import SessionClient, open_session_channel

NEEDED = ("SAIA_SSH_HOST", "SAIA_SSH_PORT", "SAIA_SSH_USER", "SAIA_SSH_KEY", "SAIA_SSH_KNOWN_HOSTS")
TEST_SERVICE = "testservice.sbatch"
NOT_PERMITTED = 77  # saia-entrypoint's exit status for a port in use
ADDED_LATENCY_TARGET = 0.002  # seconds, median, session over direct
CPU_TARGET = 0.002  # seconds of login-node CPU per request over session
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Job:
    job_id: str
    host: str
    port: int


@dataclass
class Figures:
    """One way of sending the request: its latencies and its CPU, summed over rounds."""

    latencies: list[float] = field(default_factory=list)
    login_cpu: dict[str, float] = field(default_factory=dict)  # seconds, by process kind
    hub_cpu: float = 0.0  # seconds, this whole process
    requests: int = 0

    def per_request(self, seconds: float) -> float:
        return seconds / self.requests if self.requests else 0.0


# -- the SSH side --------------------------------------------------------------------


def connect() -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(os.environ["SAIA_SSH_KNOWN_HOSTS"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        os.environ["SAIA_SSH_HOST"],
        int(os.environ["SAIA_SSH_PORT"]),
        os.environ["SAIA_SSH_USER"],
        key_filename=os.environ["SAIA_SSH_KEY"],
        allow_agent=False,
        look_for_keys=False,
    )
    transport = client.get_transport()
    assert transport is not None and isinstance(transport.sock, socket.socket)
    transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def verb(transport: paramiko.Transport, command: str, stdin: bytes = b"") -> tuple[int, bytes]:
    """One command on a new channel: its exit status and stdout."""
    channel = transport.open_session()
    channel.exec_command(command)
    if stdin:
        channel.sendall(stdin)
    channel.shutdown_write()
    output = bytearray()
    while chunk := channel.recv(65536):
        output += chunk
    status = channel.recv_exit_status()
    channel.close()
    return status, bytes(output)


def start_job(transport: paramiko.Transport) -> Job:
    """A test service job, of a service the login node runs testservice.sbatch for."""
    _, reported = verb(transport, "status")
    status = json.loads(reported)
    services = [entry["id"] for entry in status["services"] if entry["sbatch"] == TEST_SERVICE]
    if not services:
        raise SystemExit(f"the entrypoint's configuration has no service running {TEST_SERVICE}")
    top = status["port_max"]
    for port in range(top, max(top - 20, status["port_min"] - 1), -1):  # the top: less in use
        command = f"submit {services[0]} {port} {secrets.token_hex(8)}"
        exit_status, output = verb(transport, command)
        if exit_status == 0:
            job_id = output.decode().strip()
            break
        if exit_status != NOT_PERMITTED:  # anything but "that port is taken"
            raise SystemExit(f"{command}: exit status {exit_status}")
    else:
        raise SystemExit("no free port for the test service job")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, listing = verb(transport, "jobs")
        jobs = {entry["job_id"]: entry for entry in map(json.loads, listing.splitlines())}
        entry = jobs.get(job_id, {})
        if entry.get("state") == "RUNNING":
            status, probed = verb(transport, f"probe {job_id}")
            if status == 0 and json.loads(probed)["ok"]:
                return Job(job_id, entry["batch_host"], port)
        time.sleep(0.3)
    verb(transport, f"cancel {job_id}")
    raise SystemExit(f"job {job_id} did not become ready within 60 s")


# -- the login node's CPU ---------------------------------------------------------------


class LoginNodeCpu:
    """CPU time of the processes that serve one SSH connection, found by its socket."""

    def __init__(self, client: paramiko.SSHClient) -> None:
        transport = client.get_transport()
        assert transport is not None and isinstance(transport.sock, socket.socket)
        self.client_port = transport.sock.getsockname()[1]
        self.server_port = transport.sock.getpeername()[1]
        self.root = self._connection_root()

    def snapshot(self) -> dict[str, float]:
        """Seconds of CPU so far, by kind: "sshd" and "entrypoint"."""
        totals = {"sshd": 0.0, "entrypoint": 0.0}
        for pid in self._subtree():
            try:
                with open(f"/proc/{pid}/stat") as file:
                    fields = file.read().rpartition(")")[2].split()
                with open(f"/proc/{pid}/comm") as file:
                    command = file.read().strip()
            except OSError:
                continue  # ended between the listing and the read
            # After ")": state is field 3 of proc(5), so utime (field 14) is index 11.
            own = int(fields[11]) + int(fields[12])  # utime + stime
            ended_children = int(fields[13]) + int(fields[14])  # cutime + cstime
            totals["sshd" if command == "sshd" else "entrypoint"] += own / TICKS
            # The children that end here are entrypoints (forward's, one per channel),
            # reaped by sshd's session process.
            totals["entrypoint"] += ended_children / TICKS
        return totals

    def _connection_root(self) -> int:
        inode = self._server_socket_inode()
        holders = {
            int(pid)
            for pid in os.listdir("/proc")
            if pid.isdigit() and f"socket:[{inode}]" in _fd_targets(pid)
        }
        parents = {pid: _parent(pid) for pid in holders}
        roots = [pid for pid, parent in parents.items() if parent not in holders]
        if len(roots) != 1:
            raise SystemExit(f"cannot tell which sshd serves this connection: {sorted(holders)}")
        return roots[0]

    def _server_socket_inode(self) -> str:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as file:
                for line in file.readlines()[1:]:
                    columns = line.split()
                    local_port = int(columns[1].rsplit(":", 1)[1], 16)
                    remote_port = int(columns[2].rsplit(":", 1)[1], 16)
                    if (local_port, remote_port) == (self.server_port, self.client_port):
                        return columns[9]
        raise SystemExit("the SSH connection's server side is not on this machine")

    def _subtree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                children.setdefault(_parent(int(name)), []).append(int(name))
        found: list[int] = []
        todo = [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found


def _fd_targets(pid: str) -> set[str]:
    try:
        folder = f"/proc/{pid}/fd"
        return {os.readlink(f"{folder}/{fd}") for fd in os.listdir(folder)}
    except OSError:
        return set()


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return int(file.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError):
        return -1


# -- the three ways -----------------------------------------------------------------------


async def batch(
    figures: Figures, cpu: LoginNodeCpu, count: int, send: Callable[[], Awaitable[None]]
) -> None:
    before, hub_before = cpu.snapshot(), time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        await send()
        figures.latencies.append(time.perf_counter() - started)
    after, hub_after = cpu.snapshot(), time.process_time()
    for kind, seconds in after.items():
        figures.login_cpu[kind] = figures.login_cpu.get(kind, 0.0) + seconds - before[kind]
    figures.hub_cpu += hub_after - hub_before
    figures.requests += count


async def measure(args: argparse.Namespace) -> dict[str, Figures]:
    client = connect()
    transport = client.get_transport()
    assert transport is not None
    job = start_job(transport)
    cpu = LoginNodeCpu(client)
    figures = {"direct": Figures(), "session": Figures(), "forward": Figures()}
    forward_request = b"GET /health HTTP/1.1\r\nHost: hub\r\n\r\n"
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://{job.host}:{job.port}", trust_env=False) as direct,
            SessionClient(ChannelByteStream(open_session_channel(transport))) as session,
        ):

            async def send_direct() -> None:
                response = await direct.get("/health")
                assert response.status_code == 200 and response.content

            async def send_session() -> None:
                response = await session.request("GET", f"/jobs/{job.job_id}/http/health")
                assert response.status == 200 and await response.read()

            async def send_forward() -> None:
                status, output = verb(transport, f"forward {job.job_id}", forward_request)
                assert status == 0 and output.startswith(b"HTTP/1.1 200 ")

            ways = {"direct": send_direct, "session": send_session, "forward": send_forward}
            for send in ways.values():  # warm up: pools, route cache, imports
                for _ in range(args.warmup):
                    await send()
            for _ in range(args.rounds):
                for name, send in ways.items():
                    count = args.forwards if name == "forward" else args.requests
                    await batch(figures[name], cpu, count, send)
    finally:
        verb(transport, f"cancel {job.job_id}")
        client.close()
    return figures


# -- the report ---------------------------------------------------------------------------


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(figures: dict[str, Figures]) -> bool:
    direct_median = statistics.median(figures["direct"].latencies)
    print(
        "| path | requests | median | p90 | added median vs direct "
        "| login-node CPU / request (sshd + entrypoint) | hub CPU / request |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, figure in figures.items():
        latencies = sorted(figure.latencies)
        median = statistics.median(latencies)
        p90 = latencies[int(0.9 * (len(latencies) - 1))]
        added = "baseline" if name == "direct" else milliseconds(median - direct_median)
        sshd = figure.per_request(figure.login_cpu.get("sshd", 0.0))
        entrypoint = figure.per_request(figure.login_cpu.get("entrypoint", 0.0))
        login = (
            f"{milliseconds(sshd + entrypoint)} ({milliseconds(sshd)} + {milliseconds(entrypoint)})"
        )
        hub = milliseconds(figure.per_request(figure.hub_cpu))
        print(
            f"| {name} | {figure.requests} | {milliseconds(median)} | {milliseconds(p90)} "
            f"| {added} | {login} | {hub} |"
        )
    session, forward = figures["session"], figures["forward"]
    session_added = statistics.median(session.latencies) - direct_median
    forward_added = statistics.median(forward.latencies) - direct_median
    session_cpu = session.per_request(sum(session.login_cpu.values()))
    forward_cpu = forward.per_request(sum(forward.login_cpu.values()))
    print()
    print(
        f"session vs forward: added latency {session_added / forward_added:.3f}x, "
        f"login-node CPU {session_cpu / forward_cpu:.3f}x"
    )
    met_latency = session_added < ADDED_LATENCY_TARGET
    met_cpu = session_cpu < CPU_TARGET
    print(
        f"added median latency over session {milliseconds(session_added)} "
        f"(target < {milliseconds(ADDED_LATENCY_TARGET)}): {'met' if met_latency else 'MISSED'}"
    )
    print(
        f"login-node CPU per request over session {milliseconds(session_cpu)} "
        f"(target < {milliseconds(CPU_TARGET)}): {'met' if met_cpu else 'MISSED'}"
    )
    return met_latency and met_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="direct and session, per round")
    parser.add_argument("--forwards", type=int, default=20, help="forward verbs, per round")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    missing = [name for name in NEEDED if name not in os.environ]
    if missing:
        print(f"needs the dev cluster's environment: {', '.join(missing)}", file=sys.stderr)
        return 2
    cpus = Path("/proc/cpuinfo").read_text().count("processor")
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    where = f"{os.environ['SAIA_SSH_HOST']}:{os.environ['SAIA_SSH_PORT']}"
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, {cpus} CPUs, load {load}, sshd {where}")
    figures = asyncio.run(measure(args))
    return 0 if report(figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
