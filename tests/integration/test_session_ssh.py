"""The session verb over the real sshd with the forced-command key, against the real Slurm.

The hub's side is paramiko with the hub key and the known_hosts file (an
unknown host key is refused), one kept Transport, and SessionClient on one
channel running ``session``. The job is the test service with a token delay,
submitted as the entrypoint's user and named as saia names its jobs, since the
``submit`` verb's jobs inherit sshd's environment and so no token delay.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from saia.adapters.channel_stream import ChannelByteStream
from saia.adapters.session_client import SessionClient, open_session_channel
from saia.adapters.slurm_local import LocalSlurm, LocalSlurmSettings
from saia.ports import SubmitRequest
from tests.integration import test_entrypoint_ssh
from tests.integration.test_entrypoint_ssh import (
    REPO,
    SERVICE,
    Link,
    live_job_ids,
    new_port,
    wait_until,
)

# The entrypoint tests' fixture: sshd's address, the hub key, known_hosts, the config.
link = test_entrypoint_ssh.link

pytestmark = [pytest.mark.ssh, pytest.mark.slurm]

TOKEN_DELAY = 0.1  # seconds before each streamed token
PROMPT = "one two three four five six seven eight nine ten"  # 11 tokens with "echo:"


@dataclass(frozen=True)
class DelayedJob:
    job_id: str
    port: int


@pytest.fixture(scope="module")
def hub(link: Link) -> Iterator[paramiko.SSHClient]:
    """One kept SSH connection, authenticated with the hub key, the host key checked."""
    client = paramiko.SSHClient()
    client.load_host_keys(link.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        link.host,
        int(link.port),
        link.user,
        key_filename=link.key,
        allow_agent=False,
        look_for_keys=False,
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def job(link: Link) -> Iterator[DelayedJob]:
    """The test service with a token delay, running as one of saia's jobs."""
    port, token = new_port(), secrets.token_hex(8)
    slurm = LocalSlurm(
        LocalSlurmSettings(
            sbatch_dir=REPO / "sbatch",
            job_python=str(REPO / ".venv" / "bin" / "python"),
            job_output_dir=Path(os.environ["SAIA_JOB_OUTPUT_DIR"]),
        )
    )
    argv = slurm.sbatch_argv(SubmitRequest(SERVICE, "testservice.sbatch", port, token, 300.0))
    environment = {
        **os.environ,
        "SAIA_PYTHON": str(REPO / ".venv" / "bin" / "python"),
        "SAIA_SERVICE": SERVICE,
        "SAIA_TEST_TOKEN_DELAY": str(TOKEN_DELAY),
    }
    submitted = subprocess.run(
        ["runuser", "-u", link.user, "--", *argv],
        env=environment, cwd="/tmp", capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        wait_until("the delayed job to run", lambda: job_id in live_running(link))
        yield DelayedJob(job_id, port)
    finally:
        link.ask("POST", f"/slurm/cancel/{job_id}")


def live_running(link: Link) -> set[str]:
    answer = link.ask("GET", "/slurm/jobs")
    jobs = [json.loads(line) for line in answer.body.splitlines()]
    return {str(job["job_id"]) for job in jobs if job["state"] == "RUNNING"}


@asynccontextmanager
async def session(hub: paramiko.SSHClient) -> AsyncIterator[SessionClient]:
    transport = hub.get_transport()
    assert transport is not None
    channel = await asyncio.to_thread(open_session_channel, transport)
    async with SessionClient(ChannelByteStream(channel)) as client:
        yield client


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def chat(stream: bool, prompt: str = PROMPT, max_tokens: int = 16) -> bytes:
    message = {"role": "user", "content": prompt}
    request = {"model": SERVICE, "stream": stream, "max_tokens": max_tokens, "messages": [message]}
    return json.dumps(request).encode()


JSON = [("content-type", "application/json"), ("authorization", "Bearer not-logged")]


async def until_ready(client: SessionClient, job: DelayedJob) -> None:
    while True:
        probe = await client.request("GET", f"/jobs/{job.job_id}/probe?path=/health")
        if json.loads(await probe.read())["ok"]:
            return
        await asyncio.sleep(0.3)


def test_fifty_concurrent_requests_share_one_channel(
    hub: paramiko.SSHClient, job: DelayedJob
) -> None:
    """Fifty concurrent completions on one session channel are all answered, each its own."""

    async def scenario() -> None:
        async with session(hub) as client:
            await until_ready(client, job)

            async def one(i: int) -> str:
                path = f"/jobs/{job.job_id}/http/v1/chat/completions"
                body = chat(stream=False, prompt=f"request {i}")
                response = await client.request("POST", path, JSON, body)
                assert response.status == 200
                answer = json.loads(await response.read())
                content: str = answer["choices"][0]["message"]["content"]
                return content

            replies = await asyncio.gather(*(one(i) for i in range(50)))
            assert replies == [f"echo: request {i}" for i in range(50)]

    run(scenario)


def test_a_streamed_completion_arrives_token_by_token(
    hub: paramiko.SSHClient, job: DelayedJob
) -> None:
    """Server-sent events pass through chunk by chunk, as the job produces them."""

    async def scenario() -> None:
        async with session(hub) as client:
            await until_ready(client, job)
            path = f"/jobs/{job.job_id}/http/v1/chat/completions"
            started = time.monotonic()
            response = await client.request("POST", path, JSON, chat(stream=True))
            assert response.header("content-type") == "text/event-stream; charset=utf-8"
            arrivals: list[float] = []
            body = b""
            async for chunk in response:
                arrivals.append(time.monotonic() - started)
                body += chunk
            tokens = body.count(b'"content"')
            assert tokens == 11 and body.endswith(b"data: [DONE]\n\n")
            # Spread over the generation, not delivered at once at its end.
            assert len(arrivals) >= tokens
            assert arrivals[0] < arrivals[-1] - 0.7 * (tokens - 1) * TOKEN_DELAY

    run(scenario)


def test_a_cancelled_stream_stops_while_the_others_finish(
    hub: paramiko.SSHClient, job: DelayedJob
) -> None:
    """Cancelling one streamed completion resets it; the others and the session go on."""

    async def scenario() -> None:
        async with session(hub) as client:
            await until_ready(client, job)
            path = f"/jobs/{job.job_id}/http/v1/chat/completions"
            long = chat(stream=True, prompt="word " * 300, max_tokens=300)  # about 30 s

            async def read_all(body: bytes) -> bytes:
                response = await client.request("POST", path, JSON, body)
                return await response.read()

            endless = asyncio.create_task(read_all(long))
            others = [asyncio.create_task(read_all(chat(stream=True))) for _ in range(3)]
            await asyncio.sleep(0.5)
            endless.cancel()
            with pytest.raises(asyncio.CancelledError):
                await endless
            for finished in await asyncio.gather(*others):
                assert finished.endswith(b"data: [DONE]\n\n")
            after = await client.request("GET", f"/jobs/{job.job_id}/http/health")
            assert (after.status, json.loads(await after.read())) == (200, {"status": "ok"})

    run(scenario)


def test_refusals_answer_their_stream_and_the_session_goes_on(
    hub: paramiko.SSHClient, job: DelayedJob
) -> None:
    """A job that is not saia's, an unconfigured service and traversal get 4xx; then all is well."""

    async def scenario() -> None:
        async with session(hub) as client:
            order = {"service": "llama", "port": new_port(), "token": secrets.token_hex(8)}
            cases = [
                ("GET", "/jobs/4000000000/http/health", b"", 403),
                ("POST", "/slurm/submit", json.dumps(order).encode(), 403),
                ("GET", f"/jobs/{job.job_id}/http/../../etc/passwd", b"", 400),
                ("GET", "/no/such/path", b"", 404),
            ]
            for method, path, body, status in cases:
                refused = await client.request(method, path, body=body)
                assert refused.status == status, await refused.read()
                await refused.read()
            ok = await client.request("GET", f"/jobs/{job.job_id}/http/health")
            assert ok.status == 200

    run(scenario)


def test_submit_jobs_and_cancel_through_the_session(
    hub: paramiko.SSHClient,
    link: Link,
) -> None:
    """submit starts a job that /slurm/jobs lists; cancel ends it; all on one channel."""

    submitted_ids: list[str] = []

    async def scenario() -> None:
        async with session(hub) as client:
            order = {"service": SERVICE, "port": new_port(), "token": secrets.token_hex(8)}
            submitted = await client.request(
                "POST", "/slurm/submit", body=json.dumps(order).encode()
            )
            job_id = (await submitted.read()).decode().strip()
            assert submitted.status == 200, job_id
            submitted_ids.append(job_id)
            try:
                listing = await client.request("GET", "/slurm/jobs")
                listed = [json.loads(line) for line in (await listing.read()).splitlines()]
                assert job_id in {str(entry["job_id"]) for entry in listed}
            finally:
                cancelled = await client.request("POST", f"/slurm/cancel/{job_id}")
                await cancelled.read()
            assert cancelled.status == 200

    run(scenario)
    wait_until("the job to end", lambda: submitted_ids[0] not in live_job_ids(link))


def test_the_entrypoint_exits_0_when_the_hub_closes_the_channel(
    hub: paramiko.SSHClient,
) -> None:
    """The session's process ends with exit status 0 once the hub stops sending."""
    transport = hub.get_transport()
    assert transport is not None
    channel = open_session_channel(transport)

    async def scenario() -> None:
        client = SessionClient(ChannelByteStream(channel))
        await client.start()
        response = await client.request("GET", "/keep-alive")
        assert await response.read() == b"ok\n"
        channel.shutdown_write()  # the hub is done: EOF on the entrypoint's stdin
        status = await asyncio.to_thread(channel.recv_exit_status)
        assert status == 0
        await client.aclose()

    run(scenario)
