"""saia-entrypoint over the real sshd with the forced-command key, against the real Slurm.

The verbs run through the ssh client; everything the hub does runs on a
``session`` over the ssh client, spoken by the hub's own session client.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from saia.adapters.session_client import SessionClient
from saia.protocol import exits
from saia.protocol.h2_wire import AsyncioByteStream
from saia.protocol.jobs import JobRecord, job_from_line

pytestmark = [pytest.mark.ssh, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[2]
NEEDED = (
    "SAIA_SSH_HOST",
    "SAIA_SSH_PORT",
    "SAIA_SSH_USER",
    "SAIA_SSH_KEY",
    "SAIA_SSH_KNOWN_HOSTS",
    "SAIA_JOB_OUTPUT_DIR",
    "SAIA_ENTRYPOINT_CONFIG",
)
SERVICE = "testsvc"
PORT_MIN, PORT_MAX = 20000, 20999
QUEUE_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Link:
    """The hub's side of the key: the ssh CLI with nothing but the key and known_hosts."""

    host: str
    port: str
    user: str
    key: str
    known_hosts: str
    config: Path

    def ssh_argv(self, *options: str) -> list[str]:
        return [
            "ssh",
            "-i", self.key,
            "-p", self.port,
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ControlMaster=no",
            "-o", "ControlPath=none",
            *options,
            f"{self.user}@{self.host}",
        ]  # fmt: skip

    def run(
        self,
        *command: str | bytes,
        stdin: bytes = b"",
        options: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        argv: list[str | bytes] = [*self.ssh_argv(*options), *command]
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)

    def ask(self, method: str, path: str, body: bytes = b"", options: Sequence[str] = ()) -> Reply:
        """One request on a session of its own."""
        return self.ask_all([(method, path, body)], options)[0]

    def ask_all(
        self, requests: Sequence[tuple[str, str, bytes]], options: Sequence[str] = ()
    ) -> list[Reply]:
        """The requests, all at once on one session (one ssh, one entrypoint), in order."""
        return asyncio.run(asyncio.wait_for(self._session(requests, options), 60))

    async def _session(
        self, requests: Sequence[tuple[str, str, bytes]], options: Sequence[str]
    ) -> list[Reply]:
        process = await asyncio.create_subprocess_exec(
            *self.ssh_argv(*options), "session",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        client = SessionClient(AsyncioByteStream(process.stdout, process.stdin))
        try:
            await client.start()

            async def one(method: str, path: str, body: bytes) -> Reply:
                response = await client.request(method, path, body=body)
                return Reply(response.status, dict(response.headers), await response.read())

            return await asyncio.gather(*(one(*request) for request in requests))
        finally:
            await client.aclose()
            assert await process.wait() == 0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def exit_code(self) -> int:
        """The entrypoint's refusal's exit code; 0 for the job's own answers and successes."""
        return int(self.headers.get("saia-exit-code", "0"))

    @property
    def error(self) -> str:
        return str(json.loads(self.body)["error"]) if self.exit_code else ""


def submit(link: Link, service: str, port: int, token: str) -> Reply:
    order = json.dumps({"service": service, "port": port, "token": token}).encode()
    return link.ask("POST", "/slurm/submit", order)


def write_config(link: Link, login_node: str = "", **overrides: str) -> None:
    """The entrypoint's configuration for these tests; ``overrides`` are raw TOML values."""
    settings = {
        "sbatch_dir": f'"{REPO / "sbatch"}"',
        "state_dir": f'"{link.config.parent / "entrypoint-state"}"',
        "job_output_dir": f'"{os.environ["SAIA_JOB_OUTPUT_DIR"]}"',
        "job_python": f'"{REPO / ".venv" / "bin" / "python"}"',
        "port_min": str(PORT_MIN),
        "port_max": str(PORT_MAX),
        "queue_cache_seconds": str(QUEUE_CACHE_SECONDS),
        "connect_timeout": "3.0",
        "idle_timeout": "30.0",
        **overrides,
    }
    lines = [f"{key} = {value}" for key, value in settings.items()]
    lines += [f"[services.{SERVICE}]", 'sbatch = "testservice.sbatch"', "time_limit = 5"]
    if login_node:
        lines += ["[login_node]", login_node]
    link.config.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        pytest.skip(f"needs the dev cluster's environment ({', '.join(missing)}): "
                    "source the file `scripts/dev-cluster env` prints")  # fmt: skip
    if shutil.which("ssh") is None:
        pytest.skip("needs the ssh client")
    found = Link(
        host=os.environ["SAIA_SSH_HOST"],
        port=os.environ["SAIA_SSH_PORT"],
        user=os.environ["SAIA_SSH_USER"],
        key=os.environ["SAIA_SSH_KEY"],
        known_hosts=os.environ["SAIA_SSH_KNOWN_HOSTS"],
        config=Path(os.environ["SAIA_ENTRYPOINT_CONFIG"]),
    )
    try:
        socket.create_connection((found.host, int(found.port)), timeout=2).close()
    except OSError as error:
        pytest.skip(f"sshd does not answer on {found.host}:{found.port} ({error})")
    state = found.config.parent / "entrypoint-state"
    state.mkdir(mode=0o700, exist_ok=True)
    account = pwd.getpwnam(found.user)
    os.chown(state, account.pw_uid, account.pw_gid)  # the forced command runs as that user
    write_config(found)
    yield found
    write_config(found)


@dataclass(frozen=True)
class RunningJob:
    job_id: str
    port: int
    token: str


def new_port() -> int:
    return PORT_MIN + 100 + secrets.randbelow(PORT_MAX - PORT_MIN - 100)


def saia_jobs(link: Link) -> list[JobRecord]:
    """The lines of /slurm/jobs, read back as the hub's remote adapter reads them."""
    answer = link.ask("GET", "/slurm/jobs")
    assert answer.status == 200, answer.body
    return [job_from_line(line) for line in answer.body.splitlines()]


def live_job_ids(link: Link) -> set[str]:
    return {job.job_id for job in saia_jobs(link) if not job.ended}


def wait_until(what: str, check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def job(link: Link) -> Iterator[RunningJob]:
    """One running testservice job of saia's, submitted through the entrypoint."""
    port, token = new_port(), secrets.token_hex(8)
    answer = submit(link, SERVICE, port, token)
    assert answer.status == 200, answer.body
    submitted = RunningJob(answer.body.decode().strip(), port, token)
    try:
        wait_until("the job to answer its probe", lambda: probe_ok(link, submitted.job_id))
        yield submitted
    finally:
        link.ask("POST", f"/slurm/cancel/{submitted.job_id}")


def probe_ok(link: Link, job_id: str) -> bool:
    answer = link.ask("GET", f"/jobs/{job_id}/probe")
    return answer.status == 200 and json.loads(answer.body)["ok"] is True


@pytest.fixture
def marker() -> Iterator[Path]:
    path = Path(f"/tmp/saia-pwned-{uuid.uuid4().hex}")
    yield path
    path.unlink(missing_ok=True)


# -- every verb, and every path of a session -------------------------------------


def test_keep_alive_answers_ok(link: Link) -> None:
    """keep-alive prints ok and exits 0."""
    answer = link.run("keep-alive")
    assert (answer.returncode, answer.stdout) == (0, b"ok\n")


def test_status_lists_the_configured_services(link: Link) -> None:
    """status prints one JSON line with the allowed services and the port range."""
    answer = link.run("status")
    assert answer.returncode == 0, answer.stderr
    report = json.loads(answer.stdout)
    assert [service["id"] for service in report["services"]] == [SERVICE]
    assert (report["port_min"], report["port_max"]) == (PORT_MIN, PORT_MAX)


def test_submit_runs_the_service_and_jobs_lists_it(link: Link, job: RunningJob) -> None:
    """A submitted job appears in /slurm/jobs with its service, token, port and batch host."""
    listed = {entry.job_id: entry for entry in saia_jobs(link)}
    entry = listed[job.job_id]
    assert (entry.service, entry.token, entry.port) == (SERVICE, job.token, job.port)
    assert entry.state == "RUNNING" and entry.batch_host
    assert entry.time_limit == 5 * 60 and entry.start_time is not None


def test_a_retried_submit_returns_the_same_job(link: Link, job: RunningJob) -> None:
    """Submitting the same token again (a retry after a lost answer) starts nothing new."""
    before = live_job_ids(link)
    answer = submit(link, SERVICE, job.port, job.token)
    assert (answer.status, answer.body.decode().strip()) == (200, job.job_id)
    assert live_job_ids(link) == before


def test_probe_checks_a_path_of_the_job(link: Link, job: RunningJob) -> None:
    """A probe GETs the path on the job's batch host and port and reports ok and latency."""
    answer = link.ask("GET", f"/jobs/{job.job_id}/probe?path=/v1/models")
    result = json.loads(answer.body)
    assert answer.status == 200 and result["ok"] is True and result["latency"] > 0
    missing = json.loads(link.ask("GET", f"/jobs/{job.job_id}/probe?path=/no-such-path").body)
    assert missing["ok"] is False and missing["error"] == "HTTP 404"


def test_the_jobs_port_answers_only_requests_through_the_entrypoint(
    link: Link, job: RunningJob
) -> None:
    """Any other user of the cluster reaching the job's port directly gets 401 (no secret)."""
    (entry,) = [found for found in saia_jobs(link) if found.job_id == job.job_id]
    for headers in ({}, {"Authorization": "Bearer guessed"}):
        request = urllib.request.Request(
            f"http://{entry.batch_host}:{entry.port}/v1/models", headers=headers
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
    assert link.ask("GET", f"/jobs/{job.job_id}/http/v1/models").status == 200


def served_model(link: Link, job: RunningJob) -> str:
    answer = link.ask("GET", f"/jobs/{job.job_id}/http/v1/models")
    assert answer.status == 200, answer.body
    model: str = json.loads(answer.body)["data"][0]["id"]
    return model


def chat(model: str, stream: bool) -> bytes:
    message = {"role": "user", "content": "hi"}
    return json.dumps({"model": model, "stream": stream, "messages": [message]}).encode()


def test_a_request_reaches_the_job_and_its_stream_comes_back(link: Link, job: RunningJob) -> None:
    """A request on a session reaches the job; its server-sent events come back whole."""
    body = chat(served_model(link, job), stream=True)
    answer = link.ask("POST", f"/jobs/{job.job_id}/http/v1/chat/completions", body)
    assert answer.status == 200 and answer.exit_code == 0
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert b"data: [DONE]" in answer.body


def cached_at(link: Link) -> float:
    cache = link.config.parent / "entrypoint-state" / "queue.json"
    return float(cache.read_bytes().split(b"\n", 1)[0])


def test_a_burst_of_requests_all_succeed_from_one_look_at_the_queue(
    link: Link, job: RunningJob
) -> None:
    """Twenty concurrent requests on one session all get their answer from one cached squeue."""
    saia_jobs(link)  # a fresh look, cached for the burst
    started, looked = time.time(), cached_at(link)
    answers = link.ask_all([("GET", f"/jobs/{job.job_id}/http/health", b"")] * 20)
    assert [answer.status for answer in answers] == [200] * 20
    if time.time() - started < QUEUE_CACHE_SECONDS - 1:
        assert cached_at(link) == looked  # no request looked at the queue again


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/../etc/passwd", 400),
        ("GET", "/v1%2F..%2F..%2Fetc/passwd", 400),
        ("GET", "/health%2F", 400),
        ("GET", "//other-host:22/", 400),
        ("TRACE", "/health", 405),
    ],
)
def test_requests_the_entrypoint_does_not_pass_on_are_refused(
    link: Link, job: RunningJob, method: str, target: str, status: int
) -> None:
    """Traversal, escaped slashes and methods outside the list get a 4xx of the entrypoint's."""
    answer = link.ask(method, f"/jobs/{job.job_id}/http{target}")
    assert (answer.status, answer.exit_code) == (status, exits.REFUSED), answer.body
    assert probe_ok(link, job.job_id)  # and the job is none the worse


HUB_FIELDS = "inference-1\nalice@example.org\n{service}\n{path}\n -X {method} {headers}"


def legacy_command(service: str, path: str, method: str = "POST", headers: str = "") -> str:
    head = headers or '-H "content-type: application/json" -H "authorization: Bearer x"'
    return HUB_FIELDS.format(service=service, path=path, method=method, headers=head)


def test_a_legacy_request_is_answered_with_the_jobs_response(link: Link, job: RunningJob) -> None:
    """The hub's five lines and a body on stdin get the job's answer as curl -i printed it."""
    body = chat(served_model(link, job), stream=False)
    answer = link.run(legacy_command(SERVICE, "/v1/chat/completions"), stdin=body)
    assert answer.returncode == 0, answer.stderr
    head, _, payload = answer.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(payload)["object"] == "chat.completion"


def test_legacy_errors_are_the_originals_answers(link: Link) -> None:
    """Unknown services get 404, invalid fields 400, each in the original's format."""
    unknown = link.run(legacy_command("llama", "/v1/models", "GET"))
    assert unknown.returncode == exits.NOT_PERMITTED
    assert unknown.stdout.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert unknown.stdout.endswith(b"Server: KISSKI\r\n\r\nModel Not Found\r\n")
    invalid = link.run(legacy_command(SERVICE, "/../etc/passwd", "GET"))
    assert invalid.returncode == exits.BAD_DATA
    assert invalid.stdout.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_cancel_ends_the_job_and_requests_to_it_are_then_refused(link: Link) -> None:
    """A cancel ends saia's job; afterwards the job is not running and cannot be reached."""
    answer = submit(link, SERVICE, new_port(), secrets.token_hex(8))
    job_id = answer.body.decode().strip()
    assert answer.status == 200, answer.body
    assert link.ask("POST", f"/slurm/cancel/{job_id}").status == 200
    wait_until("the job to leave the live jobs", lambda: job_id not in live_job_ids(link))
    refused = link.ask("GET", f"/jobs/{job_id}/http/health")
    assert (refused.status, refused.exit_code) == (403, exits.NOT_PERMITTED)
    assert "not running" in refused.error


def test_an_unmodified_saia_hubs_first_request_starts_a_service_at_zero(link: Link) -> None:
    """Login-node placement behind SAIA's own hub: the first legacy request for a service at
    zero gets SAIA's 503 and starts a controller pass (saia tick, as the login node's
    account); the job it starts has a secret, and the entrypoint's requests get its answer."""
    name = f"legacy-{secrets.token_hex(3)}"
    account = pwd.getpwnam(link.user)
    folder = link.config.parent / f"hub-{name}"  # the account's: pytest's tmp is root's alone
    folder.mkdir(mode=0o700)
    os.chown(folder, account.pw_uid, account.pw_gid)
    try:
        legacy_drop_in(link, name, folder)
    finally:
        write_config(link)
        subprocess.run(["scancel", f"--name=saia-{name}"], capture_output=True, check=False)
        shutil.rmtree(folder)
        state = link.config.parent / "entrypoint-state"
        (state / "keep-alive.stamp").unlink(missing_ok=True)  # the next test's pass is due
        (state / "demand" / name).unlink(missing_ok=True)


def legacy_drop_in(link: Link, name: str, folder: Path) -> None:
    account = pwd.getpwnam(link.user)
    hub_config = folder / "saia.toml"
    hub_config.write_text(
        'placement = "login-node"\n'
        f'[store]\npath = "{folder / "saia.db"}"\n'
        f'[controller]\nentrypoint_state_dir = "{link.config.parent / "entrypoint-state"}"\n'
        f'sbatch_dir = "{REPO / "sbatch"}"\njob_python = "{REPO / ".venv" / "bin" / "python"}"\n'
        f'job_output_dir = "{os.environ["SAIA_JOB_OUTPUT_DIR"]}"\nslurm_user = "{link.user}"\n'
        f'[[services]]\nid = "{name}"\nsbatch = "testservice.sbatch"\n'
        "minimum_number_instances = 0\nmaximum_number_instances = 1\njob_expiry_time = 5\n"
        f"lead_time = 60\nport_min = {PORT_MIN + 500}\nport_max = {PORT_MAX}\n"
    )
    saia = [str(REPO / ".venv" / "bin" / "saia"), "--config", str(hub_config)]
    init = subprocess.run([*saia, "init"], user=account.pw_uid, group=account.pw_gid,
                          capture_output=True, timeout=60, check=False)  # fmt: skip
    assert init.returncode == 0, init.stderr
    tick = json.dumps([*saia, "tick"])
    write_config(link, login_node=f"controller_command = {tick}\nmin_interval = 1",
                 **{f"services.{name}": '{ sbatch = "testservice.sbatch", time_limit = 5 }'})
    first = link.run(legacy_command(name, "/v1/models", "GET"))
    assert first.stdout.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    answered: list[bytes] = []

    def answers() -> bool:
        answered.append(link.run(legacy_command(name, "/v1/models", "GET")).stdout)
        return answered[-1].startswith(b"HTTP/1.1 200 OK\r\n")

    wait_until("the job saia tick started to answer", answers, timeout=90)
    assert json.loads(answered[-1].partition(b"\r\n\r\n")[2])["data"][0]["id"] == name
    (job,) = [found for found in saia_jobs(link) if found.service == name and found.running]
    with pytest.raises(urllib.error.HTTPError) as refused:  # no secret, no answer
        urllib.request.urlopen(f"http://{job.batch_host}:{job.port}/v1/models", timeout=5)
    assert refused.value.code == 401


# -- what the key must not do ----------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "session $(touch {marker})",
        "session; touch {marker}",
        "keep-alive && touch {marker}",
        "status `touch {marker}`",
        "keep-alive | touch {marker}",
        "touch {marker}",
        "/bin/sh -c 'touch {marker}'",
        "session ../../{marker}",
        "submit testsvc {port} {token}",
    ],
)
def test_hostile_commands_are_refused_with_nothing_executed(
    link: Link, marker: Path, template: str
) -> None:
    """Shell syntax and traversal are refused (64): no file appears, nothing is queued."""
    port, token = new_port(), secrets.token_hex(8)
    before = saia_jobs(link)
    answer = link.run(template.format(port=port, token=token, marker=marker))
    assert answer.returncode == exits.REFUSED, answer.stderr
    assert answer.stdout == b""
    assert not marker.exists()
    after = saia_jobs(link)
    assert {job.port for job in after} - {job.port for job in before} == set()


@pytest.mark.parametrize(
    "command",
    [b"session \xff\xfe", b"keep-alive\x1b[2J", b"status\r", b"keep-alive " + b"a" * 20_000],
)
def test_bad_bytes_are_refused_as_bad_data(link: Link, command: bytes) -> None:
    """Invalid UTF-8, control characters and overlong commands exit 65.

    NUL bytes cannot be sent at all: execve refuses them in ssh's arguments, and
    sshd rejects an exec request that contains one. The grammar's unit tests
    cover them.
    """
    answer = link.run(command)
    assert answer.returncode == exits.BAD_DATA, answer.stderr
    assert answer.stdout == b""


def test_a_one_megabyte_command_line_runs_nothing(link: Link) -> None:
    """A 1 MB command never reaches a shell: refused by sshd or by the grammar."""
    chunk = "a" * 100_000  # one argv string may not exceed 128 KiB; ssh joins them
    answer = link.run("keep-alive", *([chunk] * 10))
    assert answer.returncode in (exits.BAD_DATA, 255)
    assert answer.stdout == b""


def test_unknown_verbs_and_wrong_arguments_are_refused(link: Link) -> None:
    """Unknown verbs and arguments to verbs exit 64 with the reason on stderr."""
    for command in ("reboot", "session now", "jobs", "cancel 1", "submit testsvc 20001"):
        answer = link.run(command)
        assert answer.returncode == exits.REFUSED, command
        assert answer.stderr.startswith(b"saia-entrypoint: ")


def test_slurm_variables_the_client_sends_never_reach_slurm(link: Link) -> None:
    """SBATCH_*/SLURM_*/SQUEUE_* set by the SSH client (sshd accepts them here) change
    nothing: the job is submitted, listed and cancelled as without them."""
    hostile = [
        "SBATCH_PARTITION=nosuchpartition",  # sbatch would refuse the job
        "SLURM_CONF=/nonexistent/slurm.conf",  # every command would fail
        "SQUEUE_USERS=root",  # the listing would show someone else's jobs
    ]
    options = [option for variable in hostile for option in ("-o", f"SetEnv={variable}")]
    order = json.dumps({"service": SERVICE, "port": new_port(), "token": secrets.token_hex(8)})
    answer = link.ask("POST", "/slurm/submit", order.encode(), options=options)
    assert answer.status == 200, answer.body
    job_id = answer.body.decode().strip()
    try:
        listed = link.ask("GET", "/slurm/jobs", options=options)
        assert job_id in {job_from_line(line).job_id for line in listed.body.splitlines()}
    finally:
        assert link.ask("POST", f"/slurm/cancel/{job_id}", options=options).status == 200
        wait_until("the job to end", lambda: job_id not in live_job_ids(link))


def test_a_login_without_a_command_is_refused(link: Link) -> None:
    """ssh without a command (an interactive login) gets no shell, only a refusal."""
    answer = link.run(stdin=b"id\n")
    assert answer.returncode == exits.REFUSED
    assert b"no command given" in answer.stderr


def test_services_and_ports_outside_the_configuration_are_not_permitted(
    link: Link, job: RunningJob
) -> None:
    """Unconfigured services, ports out of range and a live job's port exit 77."""
    token = secrets.token_hex(8)
    cases = [
        ("llama", new_port()),
        (SERVICE, PORT_MIN - 1),
        (SERVICE, PORT_MAX + 1),
        (SERVICE, job.port),
    ]
    before = live_job_ids(link)
    answers = [submit(link, service, port, token) for service, port in cases]
    for answer in answers:
        if answer.status == 200:  # a failure of this test: leave no job behind
            link.ask("POST", f"/slurm/cancel/{answer.body.decode().strip()}")
    assert [answer.exit_code for answer in answers] == [exits.NOT_PERMITTED] * len(cases)
    assert live_job_ids(link) == before


@pytest.fixture
def strangers(tmp_path: Path) -> Iterator[tuple[str, str, socket.socket]]:
    """Two root jobs: a plain one, and one named and commented like a saia job."""
    listener = socket.create_server(("0.0.0.0", 0))
    port = listener.getsockname()[1]
    listener.settimeout(0.5)
    output = f"--output={os.environ['SAIA_JOB_OUTPUT_DIR']}/stranger-%j.out"
    forged = [f"--job-name=saia-{SERVICE}", f"--comment=saia:{secrets.token_hex(8)}:{port}"]
    ids = []
    for options in ([], forged):
        submitted = subprocess.run(
            ["sbatch", "--parsable", output, *options, "--wrap", "sleep 60"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        ids.append(submitted.stdout.strip().split(";")[0])
    try:
        yield ids[0], ids[1], listener
    finally:
        subprocess.run(["scancel", *ids], check=False, timeout=30)
        listener.close()


def squeue_ids() -> set[str]:
    listed = subprocess.run(
        ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, check=True
    )
    return set(listed.stdout.split())


def cancellers(job_id: str) -> set[int]:
    """The uids slurmctld logged asking to kill a job (its log is the only witness)."""
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    log = next(
        line.split("=", 1)[1].strip()
        for line in conf.splitlines()
        if line.startswith("SlurmctldLogFile=")
    )
    marker = f"REQUEST_KILL_JOB JobId={job_id} uid "
    lines = Path(log).read_text(errors="replace").splitlines()
    return {int(line.split(marker)[1].split()[0]) for line in lines if marker in line}


def test_jobs_that_are_not_saias_cannot_be_cancelled_or_reached(
    link: Link, strangers: tuple[str, str, socket.socket]
) -> None:
    """Another user's jobs, even one forged to look like saia's, are refused (77) and stay."""
    plain, forged, listener = strangers
    wait_until("the strangers to be queued", lambda: plain in squeue_ids())
    for job_id in (plain, forged):
        requests = [
            ("POST", f"/slurm/cancel/{job_id}", b""),
            ("GET", f"/jobs/{job_id}/http/", b""),
            ("GET", f"/jobs/{job_id}/probe", b""),
        ]
        for answer in link.ask_all(requests):
            assert answer.exit_code == exits.NOT_PERMITTED, answer.body
            assert "not one of saia's jobs" in answer.error
    assert plain in squeue_ids()
    # A controller of another test, run as root on this shared cluster, may cancel the
    # forged job for looking like an unknown saia job; the entrypoint's user never did.
    saia_uid = pwd.getpwnam(link.user).pw_uid
    assert saia_uid not in cancellers(plain) | cancellers(forged)
    with pytest.raises(TimeoutError):
        listener.accept()  # the forged job's port was never contacted


def test_a_job_id_that_exists_nowhere_is_refused(link: Link) -> None:
    """Requests to, probes and cancels of a job id nobody has are refused (77)."""
    requests = [
        ("POST", "/slurm/cancel/4000000000", b""),
        ("GET", "/jobs/4000000000/http/", b""),
        ("GET", "/jobs/4000000000/probe", b""),
    ]
    assert [answer.exit_code for answer in link.ask_all(requests)] == [exits.NOT_PERMITTED] * 3


def test_a_pty_cannot_be_had(link: Link) -> None:
    """ssh -tt is refused a pseudo-terminal (no-pty): nothing runs with a terminal."""
    answer = link.run("keep-alive", options=["-tt"])
    assert b"PTY allocation request failed" in answer.stderr
    assert b"\r\n" not in answer.stdout  # a terminal would have turned "\n" into "\r\n"


def test_the_accounts_ssh_rc_is_never_run(link: Link) -> None:
    """~/.ssh/rc of the key's account does not run (restrict, PermitUserRC no): only the
    forced command does."""
    account = pwd.getpwnam(link.user)
    folder = Path(account.pw_dir) / ".ssh"
    created = not folder.exists()
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chown(folder, account.pw_uid, account.pw_gid)
    rc = folder / "rc"
    assert not rc.exists(), f"{rc} exists already"
    marker = Path(f"/tmp/saia-rc-ran-{uuid.uuid4().hex}")
    rc.write_text(f"touch {marker}\n")
    os.chown(rc, account.pw_uid, account.pw_gid)
    try:
        answer = link.run("keep-alive")
        assert answer.returncode == 0, answer.stderr
        assert not marker.exists()
    finally:
        rc.unlink()
        marker.unlink(missing_ok=True)
        if created:
            folder.rmdir()


def test_remote_port_forwarding_is_refused(link: Link) -> None:
    """ssh -R is refused by the server."""
    options = ["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"]
    answer = link.run("keep-alive", options=options)
    assert answer.returncode == 255
    assert b"remote port forwarding failed" in answer.stderr


def test_local_port_forwarding_reaches_nothing(link: Link) -> None:
    """ssh -L opens no channel: a connection through it never reaches the target."""
    target = socket.create_server(("127.0.0.1", 0))
    target.settimeout(1.0)
    local = socket.create_server(("127.0.0.1", 0))
    local_port = local.getsockname()[1]
    local.close()
    forward = f"127.0.0.1:{local_port}:127.0.0.1:{target.getsockname()[1]}"
    tunnel = subprocess.Popen(
        [*link.ssh_argv("-N", "-L", forward)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until("the local end of the tunnel", lambda: _accepts(local_port), timeout=10)
        with socket.create_connection(("127.0.0.1", local_port), timeout=5) as client:
            client.settimeout(5)
            try:
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                received = client.recv(100)
            except ConnectionResetError:
                received = b""
            assert received == b""  # closed: the server refused the channel
        with pytest.raises(TimeoutError):
            target.accept()
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)
        target.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_sftp_and_scp_are_refused(link: Link, marker: Path) -> None:
    """The sftp subsystem is refused, and an scp upload is not a verb (64)."""
    sftp = subprocess.run(
        ["sftp", "-b", "-", "-i", link.key, "-P", link.port,
         "-o", f"UserKnownHostsFile={link.known_hosts}", "-o", "BatchMode=yes",
         f"{link.user}@{link.host}"],
        input=b"ls\n", capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert sftp.returncode != 0
    scp = link.run("scp", "-t", str(marker))
    assert scp.returncode == exits.REFUSED
    assert not marker.exists()


# -- configuration ---------------------------------------------------------------


def test_a_bad_configuration_is_reported_with_file_and_field(link: Link) -> None:
    """A config error exits 78 naming the file and the field; nothing runs."""
    write_config(link, port_min='"low"')
    try:
        answer = link.run("keep-alive")
    finally:
        write_config(link)
    assert answer.returncode == exits.CONFIG
    assert str(link.config).encode() in answer.stderr and b"port_min" in answer.stderr


def test_keep_alive_starts_a_rate_limited_pass_in_login_node_placement(
    link: Link, tmp_path: Path
) -> None:
    """With [login_node], keep-alive starts the controller command at most once per interval."""
    log = Path(f"/tmp/saia-keep-alive-{uuid.uuid4().hex}")
    log.touch(mode=0o666)
    log.chmod(0o666)
    command = json.dumps(["/bin/sh", "-c", f"echo pass >> {log}"])
    write_config(link, login_node=f"controller_command = {command}\nmin_interval = 30")
    try:
        for _ in range(3):
            assert link.run("keep-alive").stdout == b"ok\n"
        wait_until("the pass to run", lambda: log.read_text() != "", timeout=5)
        time.sleep(0.5)
        assert log.read_text() == "pass\n"
    finally:
        write_config(link)
        stamp = link.config.parent / "entrypoint-state" / "keep-alive.stamp"
        stamp.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
