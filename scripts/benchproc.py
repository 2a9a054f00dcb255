"""Processes from /proc, for the benchmarks: CPU time, process trees, and which processes
serve an SSH connection on this host (Linux only)."""

from __future__ import annotations

import os
from collections.abc import Iterator

TICKS = os.sysconf("SC_CLK_TCK")


class NotFound(Exception):
    """What was looked for in /proc is not there, or not only once."""


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: index 0 is proc(5)'s field 3 (state)."""
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rpartition(")")[2].split()


def own_cpu(pid: int) -> float:
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def reaped_cpu(pid: int) -> float:
    fields = stat_fields(pid)
    return (int(fields[13]) + int(fields[14])) / TICKS  # cutime + cstime


def children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                children.setdefault(int(stat_fields(int(name))[1]), []).append(int(name))
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
    return children


def subtree(root: int) -> list[int]:
    children, found, todo = children_by_parent(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def socket_inodes(pid: int) -> set[str]:
    folder = f"/proc/{pid}/fd"
    targets = set()
    for fd in os.listdir(folder):
        try:
            targets.add(os.readlink(f"{folder}/{fd}"))
        except OSError:
            continue
    return {t[len("socket:[") : -1] for t in targets if t.startswith("socket:[")}


def tcp_rows() -> Iterator[tuple[int, int, str]]:
    """(local port, remote port, inode) of every TCP socket on this host."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as file:
            for line in file.readlines()[1:]:
                columns = line.split()
                yield (int(columns[1].rsplit(":", 1)[1], 16),
                       int(columns[2].rsplit(":", 1)[1], 16), columns[9])  # fmt: skip


def login_side_root(client_pid: int, ssh_port: int) -> int:
    """The sshd process at the top of the server's side of a client's one SSH connection
    (the hub's, or an OpenSSH master's), both on this host.

    The client's socket to the sshd port gives its local port; the server's socket with
    that remote port is held by sshd's processes for the connection, and the one whose
    parent does not hold it is their root (the listening sshd is its parent)."""
    mine = socket_inodes(client_pid)
    client_ports = [local for local, remote, inode in tcp_rows()
                    if remote == ssh_port and inode in mine]  # fmt: skip
    if len(client_ports) != 1:
        raise NotFound(f"process {client_pid} has {len(client_ports)} connections to port "
                       f"{ssh_port}, not one")  # fmt: skip
    server = {inode for local, remote, inode in tcp_rows()
              if (local, remote) == (ssh_port, client_ports[0])}  # fmt: skip
    holders = {int(p) for p in os.listdir("/proc") if p.isdigit() and _holds(int(p), server)}
    roots = [p for p in holders if int(stat_fields(p)[1]) not in holders]
    if len(roots) != 1:
        raise NotFound(f"cannot tell which sshd serves {client_pid}'s connection: "
                       f"{sorted(holders)}")  # fmt: skip
    return roots[0]


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        return bool(socket_inodes(pid) & inodes)
    except OSError:
        return False


def command_of(pid: int) -> tuple[str, str]:
    """The process's name and its SSH_ORIGINAL_COMMAND, if any (readable as root)."""
    with open(f"/proc/{pid}/comm") as file:
        name = file.read().strip()
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            variables = file.read().split(b"\0")
    except OSError:
        variables = []
    original = next((v[len(b"SSH_ORIGINAL_COMMAND="):].decode(errors="replace")
                     for v in variables if v.startswith(b"SSH_ORIGINAL_COMMAND=")), "")  # fmt: skip
    return name, original


def login_side(root: int) -> dict[str, float]:
    """CPU seconds so far on the login node's side of an SSH connection, from its root.

    "sshd": sshd's own processes; "session": the entrypoints serving ``session``;
    "all": everything in the subtree, with what its ended children used (the verbs'
    entrypoints, one process each, reaped by sshd)."""
    totals = {"sshd": 0.0, "session": 0.0, "all": 0.0}
    for pid in subtree(root):
        try:
            name, original = command_of(pid)
            own, reaped = own_cpu(pid), reaped_cpu(pid)
        except OSError:
            continue  # ended between the listing and the read: counted by its parent
        totals["all"] += own + reaped
        if name == "sshd":
            totals["sshd"] += own
        elif original == "session":
            totals["session"] += own
    return totals


def job_pid(port: int) -> int:
    """The test service's process, by its command line (it runs on this host)."""
    wanted = f"--port\0{port}\0".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as file:
                line = file.read()
        except OSError:
            continue
        if b"saia.testservice" in line and wanted in line + b"\0":
            return int(name)
    raise NotFound(f"no test-service process listening on port {port} on this host")
