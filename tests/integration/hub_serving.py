"""``saia serve`` in hub placement on the real dev cluster, for the whole-chain tests.

The hub runs in this test process (the proxy's server on a thread of its own),
built by ``saia.serve.Serving`` from a config file as ``saia serve`` builds it.
Its SSH link and sessions are then this process's connections, which is what
``sshd_stopped`` cuts. The login node's entrypoint knows the test's services,
whose job scripts wrap the test service with a token delay (streams arrive
chunk by chunk) or a start-up delay (a cold start is long enough to wait for).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from saia import catalog, config
from saia.domain.state import JobView
from saia.protocol import job_secret
from saia.proxy import key_commands
from saia.serve import Serving
from tests.integration.cluster import (
    REPO,
    cancel_service_jobs,
    recorded_events,
    routable,
    unique,
    wait_for,
)
from tests.integration.test_entrypoint_ssh import Link, write_config
from tests.net import free_port

TIME_LIMIT_MINUTES = 10  # the login node's time_limit, and the hub's job_expiry_time
PORT_MIN, PORT_MAX = 20500, 20599  # apart from the other SSH tests' jobs
TOKEN_DELAY = 0.05  # seconds between the chat service's tokens
COLD_START_DELAY = 3.0  # seconds the cold service's process takes to listen
RATE_LIMIT_PER_MINUTE = 300

WRAPPER = """\
#!/usr/bin/env bash
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
export {variable}={value}
exec bash {script} "$@"
"""


@dataclass
class RunningHub:
    serving: Serving
    base_url: str
    chat: str  # two ready jobs at least, tokens TOKEN_DELAY apart
    cold: str  # none until asked, then one that takes COLD_START_DELAY to start

    def key(self, user: str) -> str:
        """A key of the user's, once the proxy accepts it (after a controller pass)."""
        _, key = key_commands.issue(self.serving.hub.log, user, "test", time.time())
        wait_for(lambda: self.accepts(key), 15, f"the key of {user} to be accepted")
        return key

    def accepts(self, key: str) -> bool:
        answer = httpx.get(f"{self.base_url}/models", headers=auth(key), timeout=10)
        return answer.status_code == 200

    def client(self, key: str, timeout: float = 60.0) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=timeout)

    def ready(self, service: str) -> list[JobView]:
        return routable(self.serving.hub, service)

    def events(self, topic: str) -> list[Any]:
        return recorded_events(self.serving.hub, topic)


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def as_the_entrypoint(job: JobView) -> dict[str, str]:
    """The job's secret as the login node's entrypoint presents it: for asking a job directly."""
    state = Path(os.environ["SAIA_ENTRYPOINT_CONFIG"]).parent / "entrypoint-state"
    secret = job_secret.for_job(job_secret.load_key(str(state)), job.token)
    return {"authorization": f"Bearer {secret}"}


def served_by(job: JobView) -> int:
    """How many model requests the job's test service has seen (asked directly)."""
    answer = httpx.get(
        f"http://{job.node}:{job.port}/admin/stats", headers=as_the_entrypoint(job), timeout=10
    )
    answer.raise_for_status()
    count: int = answer.json()["requests"]
    return count


def job_scripts(folder: Path) -> Path:
    """The repository's job scripts, and the two wrappers; readable by the login account."""
    folder.mkdir(mode=0o755, exist_ok=True)
    for script in (REPO / "sbatch").glob("*.sbatch"):
        shutil.copy(script, folder / script.name)
    test_service = REPO / "sbatch" / "testservice.sbatch"
    for name, variable, value in (
        ("slow.sbatch", "SAIA_TEST_TOKEN_DELAY", TOKEN_DELAY),
        ("cold.sbatch", "SAIA_TEST_STARTUP_DELAY", COLD_START_DELAY),
    ):
        text = WRAPPER.format(variable=variable, value=value, script=test_service)
        (folder / name).write_text(text)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def hub_head(link: Link, port: int, host: str = "127.0.0.1") -> str:
    """A hub-placement saia.toml up to its [proxy] table's first lines: the SSH link to the
    dev cluster's login node, a store in the config's folder, a quick controller, and the
    proxy on ``host``:``port``."""
    return f"""\
placement = "hub"

[ssh]
host = "{link.host}"
port = {link.port}
user = "{link.user}"
key_file = "{link.key}"
known_hosts_file = "{link.known_hosts}"
keepalive_interval = 1

[store]
path = "saia.db"

[controller]
interval = 1
startup_interval = 0.25
probe_interval = 1

[proxy]
host = "{host}"
port = {port}
require_api_key = true
"""


def hub_config(folder: Path, link: Link, chat: str, cold: str, port: int) -> Path:
    common = (
        f'job_expiry_time = {TIME_LIMIT_MINUTES}\nlead_time = 60\n'
        f"port_min = {PORT_MIN}\nport_max = {PORT_MAX}\n"
    )
    text = hub_head(link, port) + f"""\
keepalive_interval = 0.3
rate_limit_per_minute = {RATE_LIMIT_PER_MINUTE}
max_body_bytes = 65536
max_wait_seconds = 60

[[services]]
id = "{chat}"
sbatch = "slow.sbatch"
minimum_number_instances = 2
maximum_number_instances = 3
inferences_per_instance = 64
{common}
[[services]]
id = "{cold}"
sbatch = "cold.sbatch"
minimum_number_instances = 0
maximum_number_instances = 1
idle_time = 600
{common}"""
    path = folder / "saia.toml"
    path.write_text(text)
    return path


@contextmanager
def running_hub(folder: Path, link: Link) -> Iterator[RunningHub]:
    chat, cold = unique("chat"), unique("cold")
    scripts = job_scripts(link.config.parent / "serve-sbatch")
    rule = '{{ sbatch = "{}", time_limit = {} }}'
    write_config(link, sbatch_dir=f'"{scripts}"', **{
        f"services.{chat}": rule.format("slow.sbatch", TIME_LIMIT_MINUTES),
        f"services.{cold}": rule.format("cold.sbatch", TIME_LIMIT_MINUTES),
    })  # fmt: skip
    port = free_port()
    settings = config.load(hub_config(folder, link, chat, cold, port))
    serving = Serving(settings)
    catalog.sync(serving.hub, settings.services, time.time())
    thread = threading.Thread(target=serving.run, name="saia-serve", daemon=True)
    thread.start()
    running = RunningHub(serving, f"http://127.0.0.1:{port}/v1", chat, cold)
    try:
        wait_for(lambda: serving.server.started, 15, "the proxy to listen")
        yield running
    finally:
        serving.stop()
        thread.join(timeout=60)
        for service in (chat, cold):
            cancel_service_jobs(service)
        write_config(link)
        assert not thread.is_alive(), "saia serve did not stop"
