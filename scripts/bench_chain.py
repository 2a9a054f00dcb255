#!/usr/bin/env python3
"""Whole-chain figures (issue 12): one real Slurm job, reached three ways.

    .venv/bin/python scripts/bench_chain.py [--duration 3] [--clients 8 32] [--rounds 3]
        [--requests 1000] [--streams 200] [--idle 60] [--keep-alive-runs 20]
        [--skip-login-node] [--entrypoint-tree CHECKOUT] [--serve-tree CHECKOUT]

Needs the dev cluster and its sshd up, and its env file sourced (the variables
``scripts/dev-cluster env`` names), and root: this host is the dev cluster's login
node. One test-service job is submitted with sbatch as the entrypoint submits one
(saia's job name and comment, as the key's user); the same OpenAI chat request,
byte for byte what the official ``openai`` client sends, then goes:

- direct: to the job's own port, the baseline;
- hub: through ``saia serve`` in hub placement, which reaches the job over its one
  kept SSH connection and the entrypoint's ``session``;
- login-node: through ``saia serve`` in login-node placement on this host (the dev
  cluster's login node), which runs Slurm's commands itself and reaches the job
  over plain HTTP.

Both ``saia serve`` adopt the job (``unknown_jobs = "adopt"``, one instance at
most), so every path ends at the same process. Figures, in one run:

- latency with one client: the three paths in turn, one request each, on one
  keep-alive connection each; medians and p99;
- throughput at each ``--clients`` count: each path for ``--duration`` seconds in
  turn, ``--rounds`` times; the median rate and its ratio to direct;
- CPU a request of each process in the chain, from /proc utime+stime around each
  throughput run: the ``saia serve``, the login node's side of the hub's SSH
  connection (its sshd processes and the entrypoint's ``session``), the job, and
  this client;
- the idle login node: CPU a second of the whole subtree of the hub's SSH
  connection on the login node (sshd, the session, and every entrypoint the hub
  started meanwhile, counted through the reaping parents' cutime+cstime) while
  no request is sent;
- streamed requests with one client: time to the first event and to the end;
- ``saia-entrypoint keep-alive`` from start to exit, run as sshd runs it (the forced
  command from authorized_keys through the user's shell, as the key's user, with
  SSH_ORIGINAL_COMMAND), beside a bare start of the same Python; and keep-alive
  over ssh on a kept OpenSSH connection (ControlMaster), with ``jobs`` and
  ``probe`` where the entrypoint still has them (before issue 12 the hub sent
  them as verbs while idle): wall time and the login node's CPU a run.

Only processes, HTTP, Slurm's commands and /proc are used, and saia's configuration
files, so the script measures whatever the entrypoint and the hub are. ``saia
serve`` runs from ``--serve-tree`` (this checkout by default) and must speak the
entrypoint's protocol; the entrypoint is whatever the dev cluster's forced command
names, or, with ``--entrypoint-tree``, that checkout's behind a private sshd (the
dev one's configuration and host key on another port). The run's service is added
to the entrypoint's configuration and the file put back at the end. Everything
started is stopped at the end, also on errors, Ctrl-C and SIGTERM. Exits 1 if a
request failed or a target is missed, 2 without the dev cluster's environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openai
import uvloop
from benchproc import (
    NotFound,
    command_of,
    job_pid,
    login_side,
    login_side_root,
    own_cpu,
    reaped_cpu,
    subtree,
)
from benchtable import Row, print_columns, print_table
from openai.types.chat import ChatCompletionMessageParam

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
NEEDED = ("SAIA_SSH_HOST", "SAIA_SSH_PORT", "SAIA_SSH_USER", "SAIA_SSH_KEY",
          "SAIA_SSH_KNOWN_HOSTS", "SAIA_ENTRYPOINT_CONFIG", "SAIA_JOB_OUTPUT_DIR",
          "SAIA_DEV_DIR")  # fmt: skip
T = TypeVar("T")
NOT_A_COMMAND = 64  # saia-entrypoint's exit status for a verb it does not know
TIME_LIMIT = 30  # minutes: the job's walltime, well beyond a run
CHAT = "/v1/chat/completions"
PROMPT = "Say hello to the whole chain."
MAX_TOKENS = 8
DIRECT, HUB, LOGIN = "direct", "hub", "login-node"
# The targets.
ADDED_MEDIAN_MS, ADDED_P99_MS = 2.0, 5.0
LOGIN_CPU_MS, HUB_CPU_MS = 0.5, 1.0  # CPU a request
IDLE_MS_PER_S = 10.0
KEEP_ALIVE_MS = 40.0
# How ``saia serve`` and the CLI are started: run in a checkout, they import its saia
# (the working folder comes first on the import path), whatever is installed.
LAUNCH = "import sys; from saia.cli import main; sys.exit(main(sys.argv[1:]))"


def say(message: str) -> None:
    print(f"bench-chain: {message}", file=sys.stderr, flush=True)


class Failed(Exception):
    """The chain did not behave; the message says where."""


# -- the login node, through the hub's key -----------------------------------------------


@dataclass(frozen=True)
class Ssh:
    """The ssh client with the hub's key; the forced command decides what runs."""

    host: str
    port: int
    user: str
    key: str
    known_hosts: str

    @classmethod
    def from_environment(cls) -> Ssh:
        return cls(os.environ["SAIA_SSH_HOST"], int(os.environ["SAIA_SSH_PORT"]),
                   os.environ["SAIA_SSH_USER"], os.environ["SAIA_SSH_KEY"],
                   os.environ["SAIA_SSH_KNOWN_HOSTS"])  # fmt: skip

    def argv(self, *options: str) -> list[str]:
        return ["ssh", "-i", self.key, "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
                *options, f"{self.user}@{self.host}"]  # fmt: skip

    def run(self, *command: str, options: Sequence[str] = ("-o", "ControlPath=none"),
            timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        return subprocess.run([*self.argv(*options), *command], capture_output=True,
                              timeout=timeout, check=False)  # fmt: skip


class EntrypointConfig:
    """This run's service in the login node's entrypoint.toml, and the file put back as found.

    The forced command reads one fixed file; the service is added as its own table, so
    whatever else the file allows stays as it was.
    """

    def __init__(self, path: Path, service: str, ssh_user: str, tree: Path,
                 section: str = "") -> None:  # fmt: skip
        self.path = path
        self.tree = tree  # whose sbatch folder a configuration written here names
        self.service = service
        self.user = ssh_user
        self.original: str | None = None
        self.made_state: Path | None = None
        self.section = section or (f'\n[services.{service}]\nsbatch = "testservice.sbatch"\n'
                                   f"time_limit = {TIME_LIMIT}\n")  # fmt: skip

    def add(self) -> None:
        if self.path.exists():
            self.original = self.path.read_text(encoding="utf-8")
            text = self.original + self.section
        else:
            text = self._defaults() + self.section
        self._write(text)

    def restore(self) -> None:
        if not self.path.exists() or self.section not in self.path.read_text(encoding="utf-8"):
            return  # rewritten by someone else meanwhile: theirs now
        if self.original is None:
            self.path.unlink()
        else:
            self._write(self.original)
        if self.made_state is not None:
            shutil.rmtree(self.made_state, ignore_errors=True)

    def _defaults(self) -> str:
        """What scripts/demo writes; the state folder belongs to the key's user."""
        state = self.path.parent / "entrypoint-state"
        if not state.exists():
            state.mkdir(mode=0o700)
            account = pwd.getpwnam(self.user)
            os.chown(state, account.pw_uid, account.pw_gid)
            self.made_state = state
        return (f'sbatch_dir = "{self.tree / "sbatch"}"\nstate_dir = "{state}"\n'
                f'job_output_dir = "{os.environ["SAIA_JOB_OUTPUT_DIR"]}"\n'
                f'job_python = "{sys.executable}"\n'
                "port_min = 20000\nport_max = 29999\n")  # fmt: skip

    def _write(self, text: str) -> None:
        scratch = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        scratch.write_text(text, encoding="utf-8")
        scratch.chmod(0o644)
        scratch.replace(self.path)


def forced_command(authorized_keys: Path) -> str:
    """The command sshd hands the key's user's shell, from an authorized_keys line."""
    found = re.search(r'command="((?:[^"\\]|\\.)*)"', authorized_keys.read_text(encoding="utf-8"))
    if found is None:
        raise Failed(f"no forced command in {authorized_keys}")
    return found.group(1).replace('\\"', '"')


def tree_of(command: str) -> Path | None:
    """The checkout a forced command's saia-entrypoint comes from, when it is installed in
    the checkout's .venv; None for any other way of running it."""
    for word in shlex.split(command):
        if word.endswith("/.venv/bin/saia-entrypoint"):
            return Path(word).resolve().parents[2]
    return None


@dataclass(frozen=True)
class LoginNode:
    """Where the hub's key leads: its ssh, the forced command and the entrypoint's files."""

    ssh: Ssh
    command: str  # as sshd hands it to the user's shell
    config: Path  # the entrypoint.toml the command reads
    tree: Path | None  # the checkout whose saia the entrypoint runs, when known


def dev_login_node() -> LoginNode:
    """The dev cluster's sshd and forced command, as they are."""
    ssh = Ssh.from_environment()
    keys = Path(os.environ["SAIA_DEV_DIR"]) / "ssh" / f"authorized_keys.{ssh.user}"
    command = forced_command(keys)
    return LoginNode(ssh, command, Path(os.environ["SAIA_ENTRYPOINT_CONFIG"]), tree_of(command))


def private_login_node(tree: Path, folder: Path, stack: ExitStack) -> LoginNode:
    """A second sshd like the dev cluster's (its configuration and host key, another port),
    whose forced command runs the entrypoint with ``tree`` first on the import path.

    For measuring a checkout while the installed entrypoint is being changed."""
    dev = Ssh.from_environment()
    dev_ssh = Path(os.environ["SAIA_DEV_DIR"]) / "ssh"
    here = folder / "sshd"
    here.mkdir()
    folder.chmod(0o755)  # the key's user reads the entrypoint's configuration in here
    port = free_port()
    config = here / "entrypoint.toml"
    entrypoint = Path(sys.executable).parent / "saia-entrypoint"
    command = f"PYTHONPATH={tree} exec {entrypoint} --config {config}"
    keys = here / f"authorized_keys.{dev.user}"
    public_key = Path(dev.key + ".pub").read_text(encoding="utf-8").strip()
    keys.write_text(f'command="{command}",restrict {public_key}\n', encoding="utf-8")
    settings = (dev_ssh / "sshd_config").read_text(encoding="utf-8")
    replaced = {"Port": str(port), "PidFile": str(here / "sshd.pid"),
                "AuthorizedKeysFile": str(here / "authorized_keys.%u")}  # fmt: skip
    lines = [f"{line.split()[0]} {replaced[line.split()[0]]}"
             if line.split() and line.split()[0] in replaced else line
             for line in settings.splitlines()]  # fmt: skip
    (here / "sshd_config").write_text("\n".join(lines) + "\n", encoding="utf-8")
    host_key = next(line.split()[1] for line in lines if line.startswith("HostKey "))
    known_hosts = here / "known_hosts"
    known_hosts.write_text(f"[{dev.host}]:{port} {Path(host_key + '.pub').read_text()}")
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(here / "sshd_config"), "-E",
                             str(here / "sshd.log")], start_new_session=True)  # fmt: skip
    stack.callback(stop_process, sshd)
    wait_listening(dev.host, port, sshd)
    ssh = Ssh(dev.host, port, dev.user, dev.key, str(known_hosts))
    return LoginNode(ssh, command, config, tree)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_listening(host: str, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


@dataclass(frozen=True)
class Job:
    job_id: str
    host: str  # its batch host, once it runs
    port: int


def port_range(config: Path) -> tuple[int, int]:
    """The ports the entrypoint allows, from its configuration (its defaults if unset)."""
    settings = tomllib.loads(config.read_text(encoding="utf-8"))
    return int(settings.get("port_min", 20000)), int(settings.get("port_max", 29999))


def unused_port(low: int, high: int) -> int:
    """A port in the range that nothing on this host (every dev node) listens on."""
    for _ in range(100):
        port = low + secrets.randbelow(high - low + 1)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise Failed(f"no free port in {low}-{high}")


def submit_job(service: str, user: str, port: int, tree: Path) -> Job:
    """A test-service job exactly as the entrypoint submits one (saia's job name and
    comment, the job's environment), as the key's user, with Slurm's own commands: this
    host is the dev cluster's login node, and the entrypoint's verbs are not needed."""
    token = secrets.token_hex(8)
    argv = ["sbatch", "--parsable", f"--job-name=saia-{service}",
            f"--comment=saia:{token}:{port}", f"--time={TIME_LIMIT}",
            f"--output={os.environ['SAIA_JOB_OUTPUT_DIR']}/saia-%j.out",
            str(tree / "sbatch" / "testservice.sbatch"), str(port)]  # fmt: skip
    account = pwd.getpwnam(user)
    env = {"PATH": os.environ["PATH"], "HOME": account.pw_dir, "USER": user,
           "SLURM_CONF": os.environ.get("SLURM_CONF", ""), "SAIA_PYTHON": sys.executable,
           "SAIA_SERVICE": service, "SAIA_PORT": str(port)}  # fmt: skip
    # From the checkout, so that the job runs its test service.
    answer = subprocess.run(argv, env=env, cwd=tree, user=account.pw_uid, group=account.pw_gid,
                            extra_groups=[], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    if answer.returncode != 0:
        raise Failed(f"sbatch: exit {answer.returncode}: {answer.stderr.strip()}")
    return Job(answer.stdout.strip().split(";")[0], "", port)


def squeue(*options: str) -> list[str]:
    answer = subprocess.run(["squeue", "--noheader", *options], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    if answer.returncode != 0:
        raise Failed(f"squeue: exit {answer.returncode}: {answer.stderr.strip()}")
    return answer.stdout.split()


def wait_running(job: Job, timeout: float = 90.0) -> Job:
    """Until Slurm runs the job and its port answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = squeue("--jobs", job.job_id, "--format=%T|%B")
        if seen and seen[0].startswith("RUNNING|"):
            host = seen[0].split("|")[1]
            try:
                socket.create_connection((host, job.port), timeout=1).close()
                return Job(job.job_id, host, job.port)
            except OSError:
                pass
        time.sleep(0.3)
    raise Failed(f"job {job.job_id} did not answer on port {job.port} within {timeout:g} s")


def service_jobs(service: str) -> list[str]:
    """The run's service's jobs in Slurm, as "id|state"."""
    return squeue("--all", f"--name=saia-{service}", "--format=%i|%T")


def cancel_service(service: str) -> list[str]:
    """scancel every job of the run's service; the ones still alive a while after."""
    subprocess.run(["scancel", f"--name=saia-{service}"], capture_output=True, check=False,
                   timeout=60)  # fmt: skip
    deadline = time.monotonic() + 30
    while (left := service_jobs(service)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


# -- saia serve ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Serve:
    """One ``saia serve``, in a folder of its own (its store and its controller lock)."""

    name: str
    folder: Path
    port: int
    tree: Path  # the checkout it runs from
    key: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.folder / "saia.toml"

    @property
    def log(self) -> Path:
        return self.folder / "serve.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def serve_config(placement: str, ssh: Ssh, service: str, port: int, tree: Path) -> str:
    ssh_table = (f'[ssh]\nhost = "{ssh.host}"\nport = {ssh.port}\nuser = "{ssh.user}"\n'
                 f'key_file = "{ssh.key}"\nknown_hosts_file = "{ssh.known_hosts}"\n\n'
                 if placement == "hub" else "")  # fmt: skip
    # Adopt the job submitted beforehand; one instance, never scaled down meanwhile.
    return f"""placement = "{placement}"

{ssh_table}[store]
backend = "sqlite"
path = "saia.db"

[controller]
unknown_jobs = "adopt"
sbatch_dir = "{tree / "sbatch"}"
job_output_dir = "{os.environ["SAIA_JOB_OUTPUT_DIR"]}"
job_python = "{sys.executable}"

[proxy]
host = "{HOST}"
port = {port}
require_api_key = true

[[services]]
id = "{service}"
name = "Whole-chain benchmark"
owned_by = "saia"
sbatch = "testservice.sbatch"
inferences_per_instance = 64
minimum_number_instances = 1
maximum_number_instances = 1
job_expiry_time = {TIME_LIMIT}
idle_time = 86400
"""


def saia_cli(serve: Serve, *args: str) -> str:
    argv = [sys.executable, "-c", LAUNCH, "--config", str(serve.config), *args]
    env = {**os.environ, "SAIA_LOG_LEVEL": "WARNING"}
    answer = subprocess.run(argv, cwd=serve.tree, capture_output=True, text=True, timeout=120,
                            env=env, check=False)  # fmt: skip
    if answer.returncode != 0:
        raise Failed(f"saia {' '.join(args)} ({serve.name}): {answer.stderr.strip()}")
    return answer.stdout


def start_serve(serve: Serve, text: str) -> None:
    serve.folder.mkdir()
    serve.config.write_text(text, encoding="utf-8")
    saia_cli(serve, "init")
    serve.key = saia_cli(serve, "keys", "issue", "bench-chain", "--label", "bench").strip()
    with serve.log.open("wb") as out:
        # A session of its own: Ctrl-C reaches this script only, which stops it in order.
        serve.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "--config", str(serve.config), "serve"], cwd=serve.tree,
            env={**os.environ, "SAIA_LOG_LEVEL": "WARNING"}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def stop_serve(serve: Serve) -> None:
    if serve.process is None or serve.process.poll() is not None:
        return
    serve.process.send_signal(signal.SIGTERM)
    try:
        serve.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        serve.process.kill()
        serve.process.wait()
        say(f"saia serve ({serve.name}) ignored SIGTERM for 60 s and was killed")


def log_tail(serve: Serve) -> str:
    return serve.log.read_text(errors="replace")[-2000:] if serve.log.exists() else ""


@dataclass(frozen=True)
class Chain:
    """The processes whose CPU is read."""

    hub: int | None
    login_root: int | None
    login_serve: int | None
    job: int

    def snapshot(self) -> dict[str, float]:
        cpu = {"job": own_cpu(self.job), "client": time.process_time()}
        if self.hub is not None:
            cpu["hub serve"] = own_cpu(self.hub)
        if self.login_root is not None:
            cpu.update({f"login {k}": v for k, v in login_side(self.login_root).items()})
        if self.login_serve is not None:
            # With the squeue it runs every pass: on the login node, that is its work too.
            cpu["login-node serve"] = own_cpu(self.login_serve) + reaped_cpu(self.login_serve)
        return cpu


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before if name in after}


# -- the request ---------------------------------------------------------------------------


def openai_request(model: str, stream: bool) -> tuple[bytes, bytes]:
    """The head and body the official openai client sends for a small chat completion.

    It talks to a socket here that answers once; the bytes are then replayed, with
    Host and Authorization set for each target."""
    listener = socket.create_server((HOST, 0))
    got: dict[str, bytes] = {}

    def answer_once() -> None:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            found = re.search(rb"(?im)^content-length: *(\d+)", head)
            while found is not None and len(body) < int(found.group(1)):
                body += connection.recv(65536)
            got["head"], got["body"] = head, body
            reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                "model": model, "choices": []}).encode()  # fmt: skip
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                               b"content-length: %d\r\n\r\n%s" % (len(reply), reply))  # fmt: skip

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    client = openai.OpenAI(base_url=f"http://{HOST}:{port}/v1", api_key="sk-placeholder",
                           max_retries=0)  # fmt: skip
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
    answer = client.chat.completions.create(model=model, max_tokens=MAX_TOKENS, stream=stream,
                                            messages=messages)  # fmt: skip
    if isinstance(answer, openai.Stream):
        answer.close()  # the stream's events are never read: only its request was wanted
    thread.join(10)
    listener.close()
    return got["head"], got["body"]


def request_for(head: bytes, body: bytes, host: str, port: int, key: str) -> bytes:
    lines = head.split(b"\r\n")
    replace = {b"host": f"Host: {host}:{port}".encode(),
               b"authorization": f"authorization: Bearer {key}".encode()}  # fmt: skip
    rewritten = [replace.get(line.split(b":", 1)[0].lower(), line) for line in lines[1:]]
    return b"\r\n".join([lines[0], *rewritten]) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    plain: bytes  # the request, answered as a whole
    stream: bytes  # the same, streamed


class Connection:
    """One keep-alive HTTP/1.1 connection sending the same request again and again."""

    def __init__(self, target: Target, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:  # fmt: skip
        self.target = target
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(target, reader, writer)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()

    async def send(self, stream: bool = False) -> tuple[int, float]:
        """The answer's status and when the first of its body came, once all of it is read."""
        self._writer.write(self.target.stream if stream else self.target.plain)
        reader = self._reader
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if length is not None:
            await reader.readexactly(int(length.group(1)))
            return status, time.perf_counter()
        first = 0.0
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
            first = first or time.perf_counter()
        await reader.readuntil(b"\r\n")
        return status, first


# -- the phases ----------------------------------------------------------------------------


@dataclass
class Tally:
    errors: int = 0
    sent: int = 0


async def latencies(targets: list[Target], requests: int, warmup: int, tally: Tally,
                    stream: bool = False) -> dict[str, list[tuple[float, float]]]:  # fmt: skip
    """One request to each target in turn, ``requests`` times: seconds to the first of
    the body and to its end."""
    connections = [await Connection.open(t) for t in targets]
    times: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
    try:
        for number in range(warmup + requests):
            for connection in connections:
                started = time.perf_counter()
                status, first = await connection.send(stream)
                ended = time.perf_counter()
                tally.sent += 1
                tally.errors += status != 200
                if number >= warmup:
                    times[connection.target.name].append((first - started, ended - started))
    finally:
        for connection in connections:
            await connection.close()
    return times


@dataclass
class Run:
    """One throughput run: its rate and what each process spent on it."""

    rate: float
    answered: int
    errors: int
    cpu: dict[str, float]
    wall: float


async def throughput(target: Target, clients: int, seconds: float, chain: Chain) -> Run:
    connections = [await Connection.open(target) for _ in range(clients)]
    answered = errors = 0
    stop_at = 0.0

    async def client(connection: Connection) -> None:
        nonlocal answered, errors
        while time.perf_counter() < stop_at:
            if (await connection.send())[0] == 200:
                answered += 1
            else:
                errors += 1

    try:
        before = chain.snapshot()
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(client(c) for c in connections))
        wall = time.perf_counter() - started
        cpu = spent(before, chain.snapshot())
    finally:
        for connection in connections:
            await connection.close()
    return Run(answered / wall, answered, errors, cpu, wall)


def idle(chain: Chain, seconds: float) -> tuple[dict[str, float], dict[str, int]]:
    """CPU seconds a second each part of the chain uses while no request is sent, and the
    entrypoints the hub started meanwhile, by verb."""
    before, started = chain.snapshot(), time.perf_counter()
    verbs = watch_verbs(chain.login_root, started + seconds) if chain.login_root else {}
    time.sleep(max(0.0, started + seconds - time.perf_counter()))
    used = spent(before, chain.snapshot())
    return {name: value / (time.perf_counter() - started) for name, value in used.items()}, verbs


def watch_verbs(root: int, until: float) -> dict[str, int]:
    """The processes sshd starts for the hub's channels until then, counted by verb.

    Each lives at least tens of milliseconds (a Python start), so reading the sshd
    processes' children files every 10 ms sees them all (for about 2% of a core here,
    which the idle table shows as this client's)."""
    sshds = [pid for pid in subtree(root) if command_of(pid)[0] == "sshd"]
    there = set(subtree(root))  # sshd's own processes and the session: not started meanwhile
    seen: dict[int, str] = {}
    while time.perf_counter() < until:
        for parent in sshds:
            try:
                children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            except OSError:
                continue
            for pid in map(int, children):
                # "?": seen before its exec, with sshd's environment; look again.
                if pid not in there and seen.get(pid, "?") == "?":
                    try:
                        seen[pid] = command_of(pid)[1].split(" ")[0] or "?"
                    except OSError:
                        seen[pid] = "?"  # ended before it was read
        time.sleep(0.01)
    counts: dict[str, int] = {}
    for verb in seen.values():
        counts[verb] = counts.get(verb, 0) + 1
    return counts


def interpreter(command: str) -> str:
    """The Python a forced command starts: its program, or this one for a console script
    (a venv's saia-entrypoint runs this interpreter)."""
    words = [word for word in shlex.split(command) if "=" not in word and word != "exec"]
    program = words[0] if words else sys.executable
    return program if "python" in os.path.basename(program) else sys.executable


def keep_alive_direct(command: str, user: str, runs: int, expect: bytes = b"ok\n") -> list[float]:
    """Start-to-exit seconds of the forced command for ``keep-alive``, as sshd starts it:
    the user's shell with -c and the command, as that user, in its home, with sshd's
    small environment."""
    account = pwd.getpwnam(user)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/games", "HOME": account.pw_dir,
           "USER": user, "LOGNAME": user, "SHELL": account.pw_shell,
           "SSH_ORIGINAL_COMMAND": "keep-alive"}  # fmt: skip
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = subprocess.run([account.pw_shell, "-c", command], env=env,
                                cwd=account.pw_dir, user=account.pw_uid, group=account.pw_gid,
                                extra_groups=[], capture_output=True, timeout=30,
                                check=False)  # fmt: skip
        times.append(time.perf_counter() - started)
        if (answer.returncode, answer.stdout) != (0, expect):
            raise Failed(f"{command}: exit {answer.returncode}, {answer.stdout!r}, "
                         f"{answer.stderr.decode(errors='replace').strip()}")  # fmt: skip
    return times


@contextmanager
def kept_connection(ssh: Ssh, folder: Path) -> Iterator[tuple[list[str], int]]:
    """An OpenSSH master connection; yields the options that send a command over it, and
    the root of its processes on the login node."""
    path = str(folder / "master")
    options = ["-o", f"ControlPath={path}"]
    master = subprocess.Popen(ssh.argv(*options, "-M", "-N"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while ssh.run(options=[*options, "-O", "check"], timeout=5).returncode != 0:
            if master.poll() is not None or time.monotonic() > deadline:
                raise Failed("the OpenSSH master connection did not come up")
            time.sleep(0.1)
        yield options, login_side_root(master.pid, ssh.port)
    finally:
        master.terminate()
        try:
            master.wait(10)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()


@dataclass(frozen=True)
class Verb:
    """A verb sent over the kept connection: each run's wall time, and the login node's
    CPU a run (sshd and the entrypoint with all it started, such as squeue)."""

    times: list[float]
    cpu: float


def verb_over_ssh(ssh: Ssh, options: list[str], root: int, command: list[str],
                  runs: int) -> Verb | None:  # fmt: skip
    """None if the entrypoint does not know the verb (its verbs are its own to change)."""
    times = []
    before = login_side(root)["all"]
    for _ in range(runs):
        started = time.perf_counter()
        answer = ssh.run(*command, options=options, timeout=30)
        times.append(time.perf_counter() - started)
        if answer.returncode == NOT_A_COMMAND:
            return None
        if answer.returncode != 0:
            raise Failed(f"ssh {' '.join(command)}: exit {answer.returncode}, "
                         f"{answer.stderr.decode(errors='replace').strip()}")  # fmt: skip
    return Verb(times, (login_side(root)["all"] - before) / runs)


# -- the run --------------------------------------------------------------------------------


@dataclass
class Results:
    latency: dict[str, list[float]] = field(default_factory=dict)
    streams: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    runs: dict[tuple[str, int], list[Run]] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)
    idle_seconds: float = 0.0
    idle_verbs: dict[str, int] = field(default_factory=dict)
    keep_alive: list[float] = field(default_factory=list)
    python_start: list[float] = field(default_factory=list)
    verbs: dict[str, Verb] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)


def wait_answering(target: Target, serve: Serve, timeout: float = 90.0) -> None:
    """Until ``saia serve`` answers the request with 200: it has adopted the job."""
    deadline = time.monotonic() + timeout

    async def once() -> int:
        connection = await Connection.open(target)
        try:
            return (await asyncio.wait_for(connection.send(), 30))[0]
        finally:
            await connection.close()

    while True:
        assert serve.process is not None
        if serve.process.poll() is not None:
            raise Failed(f"saia serve ({serve.name}) exited {serve.process.returncode}:\n"
                         f"{log_tail(serve)}")  # fmt: skip
        try:
            if asyncio.run(once()) == 200:
                return
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise Failed(f"saia serve ({serve.name}) gave no 200 in {timeout:g} s:\n"
                         f"{log_tail(serve)}")  # fmt: skip
        time.sleep(0.2)


def run_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """On uvloop, as saia serve runs, so that the client stays cheap."""
    return uvloop.run(coroutine)


def measure(args: argparse.Namespace, targets: list[Target], chain: Chain,
            results: Results) -> None:  # fmt: skip
    say(f"latency: {args.requests} requests to each of {', '.join(t.name for t in targets)}, "
        "in turn")  # fmt: skip
    timed = run_loop(latencies(targets, args.requests, args.warmup, results.tally))
    results.latency = {name: [total for _, total in times] for name, times in timed.items()}
    if args.streams > 0:
        say(f"streams: {args.streams} streamed requests to each, in turn")
        results.streams = run_loop(latencies(targets, args.streams, args.warmup, results.tally,
                                             stream=True))  # fmt: skip
    for clients in args.clients:
        for round_number in range(args.rounds):
            for target in targets:
                run = run_loop(throughput(target, clients, args.duration, chain))
                results.runs.setdefault((target.name, clients), []).append(run)
                results.tally.sent += run.answered + run.errors
                results.tally.errors += run.errors
                say(f"{clients} clients, round {round_number + 1}, {target.name}: "
                    f"{run.rate:,.0f} req/s, {run.errors} errors")  # fmt: skip
    if args.idle > 0:
        say(f"idle: {args.idle:g} s without requests")
        results.idle, results.idle_verbs = idle(chain, args.idle)
        results.idle_seconds = args.idle


def bench(args: argparse.Namespace, stack: ExitStack) -> Results:
    folder = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    if args.entrypoint_tree:
        login = private_login_node(args.entrypoint_tree.resolve(), folder, stack)
    else:
        login = dev_login_node()
    header(args, login)
    ssh = login.ssh
    service = f"bench-chain-{secrets.token_hex(3)}"
    tree = args.serve_tree.resolve()
    entrypoint = EntrypointConfig(login.config, service, ssh.user, tree)
    entrypoint.add()
    stack.callback(entrypoint.restore)
    stack.callback(lambda: say(f"left in Slurm: {cancel_service(service) or 'nothing'}"))
    port = unused_port(*port_range(login.config))
    job = wait_running(submit_job(service, ssh.user, port, tree))
    say(f"job {job.job_id} of {service} runs on {job.host}, port {job.port}")
    serves = [Serve(HUB, folder / "hub", free_port(), tree)]
    if not args.skip_login_node:
        serves.append(Serve(LOGIN, folder / "login-node", free_port(), tree))
    plain, stream = openai_request(service, stream=False), openai_request(service, stream=True)

    def target(name: str, host: str, port: int, key: str) -> Target:
        return Target(name, host, port, request_for(*plain, host, port, key),
                      request_for(*stream, host, port, key))  # fmt: skip

    targets = [target(DIRECT, job.host, job.port, "")]
    for serve in serves:
        stack.callback(stop_serve, serve)
        placement = "hub" if serve.name == HUB else "login-node"
        start_serve(serve, serve_config(placement, ssh, service, serve.port, tree))
        targets.append(target(serve.name, HOST, serve.port, serve.key))
        wait_answering(targets[-1], serve)
        say(f"saia serve ({serve.name}) answers on port {serve.port}")
    jobs = service_jobs(service)
    if jobs != [f"{job.job_id}|RUNNING"]:
        raise Failed(f"the service has jobs {jobs}, not only the adopted {job.job_id}")
    hub = serves[0]
    chain = Chain(hub=hub.pid, login_root=login_side_root(hub.pid, ssh.port),
                  login_serve=serves[1].pid if len(serves) > 1 else None,
                  job=job_pid(job.port))  # fmt: skip
    results = Results()
    measure(args, targets, chain, results)
    if args.keep_alive_runs > 0:
        say(f"keep-alive: {args.keep_alive_runs} runs of {login.command!r}, then over ssh")
        results.keep_alive = keep_alive_direct(login.command, ssh.user, args.keep_alive_runs)
        # The floor: the forced command's interpreter started the same way, importing
        # nothing of saia.
        bare = f"exec {interpreter(login.command)} -c pass"
        results.python_start = keep_alive_direct(bare, ssh.user, args.keep_alive_runs, b"")
        with kept_connection(ssh, folder) as (options, root):
            # The first channels pay for the connection's set-up.
            verb_over_ssh(ssh, options, root, ["keep-alive"], 3)
            # What the hub's link and controller send while idle, one after the other.
            for command in (["keep-alive"], ["jobs"], ["probe", job.job_id]):
                verb = verb_over_ssh(ssh, options, root, command, args.keep_alive_runs)
                if verb is None:
                    say(f"{command[0]}: not a verb of this entrypoint; left out")
                else:
                    results.verbs[command[0]] = verb
    for serve in serves:
        if serve.process is not None and serve.process.poll() is not None:
            raise Failed(f"saia serve ({serve.name}) exited during the run:\n{log_tail(serve)}")
    return results


# -- the report -----------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_table(results: Results) -> None:
    direct = results.latency[DIRECT]
    base_median, base_p99 = statistics.median(direct), quantile(direct, 0.99)
    rows = []
    for name, times in results.latency.items():
        median, p99 = statistics.median(times), quantile(times, 0.99)
        added = ("-", "-") if name == DIRECT else (f"+{ms(median - base_median)}",
                                                   f"+{ms(p99 - base_p99)}")  # fmt: skip
        rows.append((name, str(len(times)), ms(median), ms(p99), *added))
    print_columns(("1 client", "requests", "median", "p99", "added median", "added p99"), rows)


# Which processes each path's CPU a request is read from, and how they are shown.
PARTS = {
    DIRECT: (),
    HUB: (("hub serve", "hub serve"), ("login sshd", "login sshd"),
          ("login session", "login session")),
    LOGIN: (("login-node serve", "login-node serve"),),
}  # fmt: skip


def per_request_us(runs: list[Run], part: str) -> float:
    """Median over the rounds of the part's CPU a request, in microseconds."""
    return statistics.median(1e6 * r.cpu.get(part, 0.0) / max(1, r.answered) for r in runs)


def throughput_table(results: Results) -> None:
    rows = []
    for (name, clients), runs in results.runs.items():
        rate = statistics.median(r.rate for r in runs)
        base = statistics.median(r.rate for r in results.runs[(DIRECT, clients)])
        parts = [f"{label} {per_request_us(runs, part):.0f}" for part, label in PARTS[name]]
        busy = statistics.median(r.cpu["client"] / r.wall for r in runs)
        rows.append((name, str(clients), f"{rate:,.0f}", f"{rate / base:.2f}",
                     str(sum(r.errors for r in runs)),
                     f"{per_request_us(runs, 'job'):.0f}", "; ".join(parts) or "-",
                     f"{per_request_us(runs, 'client'):.0f} ({busy:.0%} busy)"))  # fmt: skip
    print_columns(("path", "clients", "req/s", "/ direct", "errors", "job us/req",
                   "chain us/req", "client us/req"), rows)  # fmt: skip


def stream_table(results: Results) -> None:
    streams = results.streams
    firsts = {name: statistics.median(f for f, _ in times) for name, times in streams.items()}
    ends = {name: statistics.median(e for _, e in times) for name, times in streams.items()}
    rows = [(name, str(len(times)), ms(firsts[name]), ms(ends[name]),
             "-" if name == DIRECT else f"+{ms(firsts[name] - firsts[DIRECT])}",
             "-" if name == DIRECT else f"+{ms(ends[name] - ends[DIRECT])}")
            for name, times in results.streams.items()]  # fmt: skip
    print_columns(("streamed, 1 client", "requests", "first event", "whole", "added first",
                   "added whole"), rows)  # fmt: skip


def idle_table(results: Results) -> None:
    names = {"login all": "login node, hub's connection: sshd + every entrypoint",
             "login sshd": "  of which sshd's own", "login session": "  of which the session",
             "hub serve": "saia serve (hub)",
             "login-node serve": "saia serve (login-node), with its squeue",
             "job": "the job", "client": "this client"}  # fmt: skip
    rows = [(label, f"{1000 * results.idle[key]:.2f} ms/s") for key, label in names.items()
            if key in results.idle]  # fmt: skip
    print_columns((f"idle, {results.idle_seconds:g} s", "CPU a second"), rows)
    started = ", ".join(f"{count} {verb}" for verb, count in sorted(results.idle_verbs.items()))
    print(f"entrypoints the hub started meanwhile: {started or 'none'}")


def verb_table(results: Results) -> None:
    rows = [(name, f"{1000 * statistics.median(verb.times):.1f} ms", f"{1000 * verb.cpu:.1f} ms")
            for name, verb in results.verbs.items()]  # fmt: skip
    print_columns(("verb over ssh, kept connection", "wall, median", "login-node CPU a run"),
                  rows)  # fmt: skip


def target_rows(results: Results, clients: Sequence[int]) -> list[Row]:
    direct, hub = results.latency[DIRECT], results.latency[HUB]
    rows = []
    for label, q, target in (("median", 0.5, ADDED_MEDIAN_MS), ("p99", 0.99, ADDED_P99_MS)):
        base, through = quantile(direct, q), quantile(hub, q)
        added = 1000 * (through - base)
        rows.append(Row(f"hub added latency, {label}", f"+{added:.2f} ms ({ms(through)})",
                        f"{ms(base)} direct", f"{through / base:.1f}x", f"< +{target:g} ms",
                        added < target))  # fmt: skip
    for count in clients:
        runs = results.runs[(HUB, count)]
        login = per_request_us(runs, "login sshd") + per_request_us(runs, "login session")
        hub_us = per_request_us(runs, "hub serve")
        job_us = per_request_us(runs, "job")
        rows.append(Row(f"login-node CPU a request, {count} clients", f"{login:.0f} us",
                        f"{job_us:.0f} us the job", f"{login / job_us:.1f}x",
                        f"< {LOGIN_CPU_MS * 1000:.0f} us",
                        login < LOGIN_CPU_MS * 1000))  # fmt: skip
        rows.append(Row(f"hub CPU a request, {count} clients", f"{hub_us:.0f} us",
                        f"{job_us:.0f} us the job", f"{hub_us / job_us:.1f}x",
                        f"< {HUB_CPU_MS * 1000:.0f} us", hub_us < HUB_CPU_MS * 1000))  # fmt: skip
    if results.idle:
        idle_ms = 1000 * results.idle["login all"]
        rows.append(Row("idle login node", f"{idle_ms:.2f} ms/s", "-", "-",
                        f"< {IDLE_MS_PER_S:g} ms/s", idle_ms < IDLE_MS_PER_S))  # fmt: skip
    if results.keep_alive:
        median = 1000 * statistics.median(results.keep_alive)
        bare = 1000 * statistics.median(results.python_start)
        rows.append(Row("keep-alive start to exit", f"{median:.1f} ms",
                        f"{bare:.1f} ms python -c pass", f"{median / bare:.2f}x",
                        f"< {KEEP_ALIVE_MS:g} ms", median < KEEP_ALIVE_MS))  # fmt: skip
    return rows


def report(results: Results, args: argparse.Namespace) -> bool:
    print()
    latency_table(results)
    if results.streams:
        print()
        stream_table(results)
    print()
    throughput_table(results)
    if results.idle:
        print()
        idle_table(results)
    if results.verbs:
        print()
        verb_table(results)
    print()
    rows = target_rows(results, args.clients)
    print_table(rows)
    tally = results.tally
    print(f"\n{tally.sent:,} requests, {tally.errors} not answered 200")
    return tally.errors == 0 and all(row.met is not False for row in rows)


def tree_version(tree: Path) -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *argv], capture_output=True, text=True,
                              check=False).stdout.strip()  # fmt: skip

    dirty = " with uncommitted changes" if git("status", "--porcelain", "--", "saia") else ""
    return f"{tree} at {git('rev-parse', '--short', 'HEAD') or '?'}{dirty}"


def header(args: argparse.Namespace, login: LoginNode) -> None:
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, load {load}")
    print(f"# saia serve and the job: {tree_version(args.serve_tree.resolve())}")
    where = "a private sshd" if args.entrypoint_tree else "the dev cluster's sshd"
    print(f"# entrypoint, behind {where} on port {login.ssh.port}: {login.command}")
    if login.tree is not None:
        print(f"#   its saia: {tree_version(login.tree)}")
    print(f"# latency {args.requests} requests a path; throughput {args.rounds} x "
          f"{args.duration:g} s a path at {', '.join(map(str, args.clients))} clients, "
          "medians; CPU in us a request, medians over the rounds", flush=True)  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds a throughput run")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs a path")
    parser.add_argument("--requests", type=int, default=1000, help="sequential, a path")
    parser.add_argument("--streams", type=int, default=200, help="streamed, a path; 0: skip")
    parser.add_argument("--warmup", type=int, default=50, help="sequential, a path, not timed")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds idle; 0: skip")
    parser.add_argument("--keep-alive-runs", type=int, default=20, help="0: skip")
    parser.add_argument("--entrypoint-tree", type=Path, metavar="CHECKOUT",
                        help="a second sshd whose forced command runs this checkout's "
                        "entrypoint, instead of the dev cluster's sshd")  # fmt: skip
    parser.add_argument("--serve-tree", type=Path, default=REPO, metavar="CHECKOUT",
                        help="where saia serve and the job run from (default: here)")  # fmt: skip
    parser.add_argument("--skip-login-node", action="store_true",
                        help="leave out saia serve in login-node placement")  # fmt: skip
    return parser.parse_args(argv)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        say(f"needs the dev cluster's environment ({', '.join(missing)}): "
            "source the file `scripts/dev-cluster env` prints")  # fmt: skip
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        with ExitStack() as stack:
            results = bench(args, stack)
    except (Failed, NotFound) as error:
        say(f"failed: {error}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        return 130
    return 0 if report(results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
