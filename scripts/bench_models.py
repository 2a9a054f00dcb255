#!/usr/bin/env python3
"""Real models through saia (issue 13): cold starts, time to first token, tokens a second.

    .venv/bin/python scripts/bench_models.py [--streams 24] [--max-tokens 128]

Needs the dev cluster and its sshd up, its env file sourced, the models staged
(``scripts/models all``, and what ``scripts/models env`` prints in the environment),
and root (this host is the dev cluster's login node). ``saia serve`` runs in hub
placement with two services at zero instances: all-MiniLM-L6-v2 (embeddings) and
Gemma 3 270M (llama.cpp's llama-server).

- Cold start of each model: one request through the API from zero instances, while
  this script watches Slurm's queue (every 50 ms) and the job's own /health (every
  20 ms). The answer's time splits into saia's submission (request to the job in
  Slurm's queue), Slurm's start (queued to running), the model's load (running to
  its /health answering 200) and saia's readiness and routing (/health first 200 to
  the answer, less the same request's time straight to the job afterwards). saia's
  own part is the first plus the last.
- Chat streams, time to the first token and generated tokens a second: the same
  streamed request (greedy decoding, ``--max-tokens``) ``--streams`` times through
  saia and straight to the job, alternating which goes first, one at a time with a
  pause between them; medians, and their differences and ratio. The model runs on one
  of the machine's cores, the chain on the other (see MODEL_CPUS).

Everything started is stopped at the end and the entrypoint's file put back. Exits 1
when a figure misses its target, 2 without the environment it needs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chain import (
    HOST,
    NEEDED,
    EntrypointConfig,
    Failed,
    Serve,
    Ssh,
    dev_login_node,
    free_port,
    log_tail,
    port_range,
    start_serve,
    stop_serve,
    unused_port,
    wait_listening,
)
from benchproc import login_side_root, subtree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from saia.protocol import job_secret  # noqa: E402

CHAT_ENV = ("SAIA_CHAT_MODEL_FILE", "SAIA_CHAT_TEMPLATE_FILE", "SAIA_LLAMA_SERVER")
MODELS = ("SAIA_EMBEDDINGS_MODEL_DIR", *CHAT_ENV)
TIME_LIMIT = 30
EMBEDDINGS, CHAT = "bench-minilm", "bench-gemma"
PROMPT = "Write one sentence about the sea."
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread."]
SAIA_COLD_START_TARGET = 1.0  # seconds of a cold start that are saia's own
TTFT_TARGET = 0.005  # seconds saia may add to the time to the first token
THROUGHPUT_TARGET = 0.02  # fraction of tokens a second saia may cost
# Between two measured streams: what the last one left to do (saia records each request
# when it ends) is done before the next starts, so each stream is measured on its own.
SETTLE = 0.3


def say(message: str) -> None:
    print(f"bench-models: {message}", file=sys.stderr, flush=True)


# The model gets one of this machine's two cores, the chain (client, hub, sshd, entrypoint)
# the other, as a compute node and a hub are different machines: sharing cores, the
# relay of each token and the model's decoding would take turns, and the comparison
# would measure that (see pin_apart).
MODEL_CPUS = 1


def entrypoint_section() -> str:
    rule = ('\n[services.{}]\nsbatch = "{}"\ntime_limit = {}\ncpus_per_task = '
            f"{MODEL_CPUS}\n[services.{{}}.env]\n{{}}\n")  # fmt: skip
    embeddings = f'SAIA_EMBEDDINGS_MODEL_DIR = "{os.environ["SAIA_EMBEDDINGS_MODEL_DIR"]}"'
    chat = "\n".join(f'{name} = "{os.environ[name]}"' for name in CHAT_ENV)
    return (rule.format(EMBEDDINGS, "embeddings.sbatch", TIME_LIMIT, EMBEDDINGS, embeddings)
            + rule.format(CHAT, "llama-server.sbatch", TIME_LIMIT, CHAT, chat))  # fmt: skip


def serve_config(ssh: Ssh, port: int, ports: tuple[int, int]) -> str:
    """Both services at zero instances, with the login node's port range for their jobs."""
    service = f"""
[[services]]
id = "{{}}"
sbatch = "{{}}"
port_min = {ports[0]}
port_max = {ports[1]}
minimum_number_instances = 0
maximum_number_instances = 1
inferences_per_instance = 4
job_expiry_time = {{}}
idle_time = 86400
"""
    return f"""placement = "hub"

[ssh]
host = "{ssh.host}"
port = {ssh.port}
user = "{ssh.user}"
key_file = "{ssh.key}"
known_hosts_file = "{ssh.known_hosts}"

[store]
backend = "sqlite"
path = "saia.db"

[controller]
interval = 2

[proxy]
host = "{HOST}"
port = {port}
require_api_key = true
max_wait_seconds = 300
""" + service.format(EMBEDDINGS, "embeddings.sbatch", TIME_LIMIT) + service.format(
        CHAT, "llama-server.sbatch", TIME_LIMIT
    )


# -- the job, as Slurm and its own port show it ------------------------------------------


@dataclass
class Watched:
    """When the job of a service was first seen queued, running, and answering /health."""

    service: str
    queued: float = 0.0
    running: float = 0.0
    healthy: float = 0.0
    node: str = ""
    port: int = 0
    token: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        while not self.stop.is_set() and not self.healthy:
            if not self.running:
                self._look_at_queue()
            elif self._health() == 200:
                self.healthy = time.monotonic()
            time.sleep(0.02 if self.running else 0.05)

    def _look_at_queue(self) -> None:
        out = subprocess.run(["squeue", "-h", f"--name=saia-{self.service}", "-o", "%T|%B|%k"],
                             capture_output=True, text=True, check=False).stdout  # fmt: skip
        line = out.strip().splitlines()[0] if out.strip() else ""
        if not line:
            return
        now = time.monotonic()
        self.queued = self.queued or now
        state, node, comment = line.split("|", 2)
        if state == "RUNNING":
            self.running = now
            self.node = "127.0.0.1" if node in ("", "(null)") else node
            self.token, self.port = comment_fields(comment)

    def _health(self) -> int:
        try:
            return httpx.get(f"http://{self.node}:{self.port}/health", timeout=1).status_code
        except httpx.HTTPError:
            return 0


def comment_fields(comment: str) -> tuple[str, int]:
    """The token and port in saia's Slurm comment, ``saia:<token>:<port>``."""
    _, token, port = comment.split(":")
    return token, int(port)


def secret_of(watched: Watched, config: Path) -> str:
    state = config.parent / "entrypoint-state"
    return job_secret.for_job(job_secret.load_key(str(state)), watched.token)


# -- requests ------------------------------------------------------------------------------


def embeddings_body(model: str) -> bytes:
    return orjson.dumps({"model": model, "input": SENTENCES})


def chat_body(model: str, max_tokens: int, stream: bool) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "temperature": 0, "stream": stream}  # fmt: skip
    if stream:
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def post(client: httpx.Client, url: str, key: str, body: bytes) -> float:
    started = time.monotonic()
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    answer = client.post(url, content=body, headers=headers)
    if answer.status_code != 200:
        raise Failed(f"{url}: {answer.status_code} {answer.text[:300]}")
    return time.monotonic() - started


@dataclass(frozen=True)
class Stream:
    first_token: float  # seconds from sending to the first content chunk
    tokens_per_second: float  # generated tokens over the first-to-last content span
    tokens: int


def stream(client: httpx.Client, url: str, key: str, body: bytes) -> Stream:
    """One streamed request on a kept connection, as the OpenAI clients keep theirs.

    llama-server closes a connection idle for 5 s; a request that meets such a close
    before any answer is sent again on a new connection, timed afresh, as those
    clients retry it."""
    try:
        return _stream(client, url, key, body)
    except httpx.RemoteProtocolError:
        return _stream(client, url, key, body)


def _stream(client: httpx.Client, url: str, key: str, body: bytes) -> Stream:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    started = time.monotonic()
    first = last = 0.0
    tokens = 0
    with client.stream("POST", url, content=body, headers=headers) as answer:
        if answer.status_code != 200:
            raise Failed(f"{url}: {answer.status_code} {answer.read()[:300]!r}")
        for line in answer.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if any(choice.get("delta", {}).get("content") for choice in chunk.get("choices", [])):
                last = time.monotonic()
                first = first or last
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if not tokens or last <= first:
        raise Failed(f"{url}: a stream without usage or with one token")
    # The first token's own time is the time to it; the rest arrive at the decode rate.
    return Stream(first - started, (tokens - 1) / (last - first), tokens)


# -- the run -------------------------------------------------------------------------------


@dataclass
class ColdStart:
    model: str
    answer: float  # the whole request, from zero instances
    submission: float  # request sent -> the job in Slurm's queue
    slurm: float  # queued -> running
    load: float  # running -> the model's /health answers 200
    first_answer: float  # a twin job's first request, straight, once its /health says 200
    ready_to_answer: float  # /health 200 -> the answer, less first_answer

    @property
    def saia(self) -> float:
        return self.submission + self.ready_to_answer


def first_answer_straight(service: str, script: str, env: dict[str, str], url_path: str,
                          body: bytes) -> float:  # fmt: skip
    """A twin of the service's job, submitted straight to Slurm without saia: the seconds
    from its /health first answering 200 to the answer of its first request, the part of
    a cold start's last step that is the model's own (a fresh model's first request is
    slower than later ones)."""
    port = unused_port(20000, 29999)
    name = f"bench-twin-{service}"
    environment = {**os.environ, **env, "SAIA_PYTHON": sys.executable, "SAIA_SERVICE": service}
    environment.pop("SAIA_JOB_SECRET", None)
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={name}", f"--cpus-per-task={MODEL_CPUS}",
         "--time=10", "--output=/dev/null", str(REPO / "sbatch" / script), str(port)],
        env=environment, capture_output=True, text=True, check=False)  # fmt: skip
    if submitted.returncode != 0:
        raise Failed(f"sbatch {script}: {submitted.stderr.strip()}")
    job = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 300
        node = ""
        while not node:
            out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%B"], capture_output=True,
                                 text=True, check=False).stdout.strip()  # fmt: skip
            state, _, host = out.partition("|")
            node = ("127.0.0.1" if host in ("", "(null)") else host) if state == "RUNNING" else ""
            if time.monotonic() > deadline:
                raise Failed(f"the twin job {job} did not start")
            time.sleep(0.05)
        with httpx.Client(timeout=300) as client:
            while True:
                try:
                    if client.get(f"http://{node}:{port}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise Failed(f"the twin job {job} never answered /health")
                time.sleep(0.02)
            return post(client, f"http://{node}:{port}/v1{url_path}", "", body)
    finally:
        subprocess.run(["scancel", job], check=False)


def cold_start(client: httpx.Client, serve: Serve, service: str, url_path: str, body: bytes,
               first_answer: float) -> tuple[ColdStart, Watched]:  # fmt: skip
    watched = Watched(service)
    watcher = threading.Thread(target=watched.watch, daemon=True)
    started = time.monotonic()
    watcher.start()
    try:
        total = post(client, f"http://{HOST}:{serve.port}/v1{url_path}", serve.key, body)
    finally:
        watched.stop.set()
        watcher.join()
    if not watched.healthy:
        raise Failed(f"{service}: answered before this script saw the job healthy")
    ended = started + total
    return ColdStart(
        model=service, answer=total, submission=watched.queued - started,
        slurm=watched.running - watched.queued, load=watched.healthy - watched.running,
        first_answer=first_answer, ready_to_answer=ended - watched.healthy - first_answer,
    ), watched  # fmt: skip


def compare_streams(client: httpx.Client, serve: Serve, watched: Watched, config: Path,
                    runs: int, max_tokens: int) -> tuple[list[Stream], list[Stream]]:  # fmt: skip
    body = chat_body(CHAT, max_tokens, stream=True)
    through = f"http://{HOST}:{serve.port}/v1/chat/completions"
    direct = f"http://{watched.node}:{watched.port}/v1/chat/completions"
    secret = secret_of(watched, config)
    via_saia: list[Stream] = []
    straight: list[Stream] = []
    stream(client, through, serve.key, body)  # warm both ways, and the prompt cache
    stream(client, direct, secret, body)
    for run in range(runs):
        pair: list[tuple[list[Stream], Callable[[], Stream]]] = [
            (via_saia, lambda: stream(client, through, serve.key, body)),
            (straight, lambda: stream(client, direct, secret, body)),
        ]
        for results, measure in pair if run % 2 == 0 else reversed(pair):
            time.sleep(SETTLE)
            results.append(measure())
    return via_saia, straight


def pin_apart(serve: Serve, watched: Watched, ssh_port: int) -> str:
    """The chat job's processes on the last core, the chain's (this script, saia serve, the
    login node's sshd and entrypoint for it) on the others; what was done, for the report."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return "not pinned: one core"
    wanted = f"--port\0{watched.port}\0".encode()
    lines = {int(name): _cmdline(int(name)) for name in os.listdir("/proc") if name.isdigit()}
    model = [pid for pid, line in lines.items() if wanted in line and b"llama-server" in line]
    if len(model) != 1:
        raise Failed(f"found {len(model)} llama-server processes on port {watched.port}")
    login = login_side_root(serve.pid, ssh_port)
    for pid, where in ((model[0], {cores[-1]}), (os.getpid(), set(cores[:-1])),
                       *((p, set(cores[:-1])) for p in [*subtree(serve.pid), *subtree(login)])):
        for task in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(task), where)
    return f"llama-server on core {cores[-1]}, the chain on {', '.join(map(str, cores[:-1]))}"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read() + b"\0"
    except OSError:
        return b""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(colds: list[ColdStart], via_saia: list[Stream], straight: list[Stream]) -> bool:
    ok = True
    print("\nCold start from zero instances, through the API (seconds)\n")
    print("| model | answer | saia: submission | Slurm: start | model: load "
          "| model: first answer | saia: ready to answer | saia's part |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for cold in colds:
        print(f"| {cold.model} | {cold.answer:.2f} | {cold.submission:.2f} | {cold.slurm:.2f} "
              f"| {cold.load:.2f} | {cold.first_answer:.2f} | {cold.ready_to_answer:.2f} "
              f"| {cold.saia:.2f} |")
        ok &= cold.saia < SAIA_COLD_START_TARGET
    ttft_saia = statistics.median(s.first_token for s in via_saia)
    ttft_direct = statistics.median(s.first_token for s in straight)
    rate_saia = statistics.median(s.tokens_per_second for s in via_saia)
    rate_direct = statistics.median(s.tokens_per_second for s in straight)
    added = ttft_saia - ttft_direct
    ratio = rate_saia / rate_direct
    print(f"\nChat streams ({len(via_saia)} each way, {via_saia[0].tokens} tokens, medians)\n")
    print("| path | time to first token | tokens a second |")
    print("|---|---:|---:|")
    print(f"| straight to the job | {ms(ttft_direct)} | {rate_direct:.1f} |")
    print(f"| through saia | {ms(ttft_saia)} | {rate_saia:.1f} |")
    print(f"| saia's difference | +{ms(added)} | x{ratio:.3f} |")
    ok &= added < TTFT_TARGET and abs(1 - ratio) <= THROUGHPUT_TARGET
    verdict = "met" if ok else "MISSED"
    print(f"\ntargets ({verdict}): saia's part of a cold start < {SAIA_COLD_START_TARGET:g} s; "
          f"time to first token +< {ms(TTFT_TARGET)}; tokens a second within "
          f"{THROUGHPUT_TARGET:.0%}")
    return ok


def bench(args: argparse.Namespace, stack: ExitStack) -> bool:
    login = dev_login_node()
    entrypoint = EntrypointConfig(login.config, CHAT, login.ssh.user, REPO,
                                  section=entrypoint_section())  # fmt: skip
    entrypoint.add()
    stack.callback(entrypoint.restore)
    for service in (EMBEDDINGS, CHAT):
        stack.callback(subprocess.run, ["scancel", f"--name=saia-{service}"], check=False)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-models-")))
    serve = Serve("hub", folder / "hub", free_port(), REPO)
    start_serve(serve, serve_config(login.ssh, serve.port, port_range(login.config)))
    stack.callback(stop_serve, serve)
    try:
        return measure_models(args, stack, serve, login.config, login.ssh.port)
    except Failed:
        say(f"saia serve's log ends:\n{log_tail(serve)}")
        raise


def measure_models(args: argparse.Namespace, stack: ExitStack, serve: Serve, config: Path,
                   login_port: int) -> bool:  # fmt: skip
    assert serve.process is not None
    wait_listening(HOST, serve.port, serve.process)
    client = stack.enter_context(httpx.Client(timeout=300))
    colds = []
    models = [
        (EMBEDDINGS, "embeddings.sbatch", {"SAIA_EMBEDDINGS_MODEL_DIR": ""}, "/embeddings",
         embeddings_body(EMBEDDINGS)),
        (CHAT, "llama-server.sbatch", dict.fromkeys(CHAT_ENV, ""), "/chat/completions",
         chat_body(CHAT, 8, stream=False)),
    ]  # fmt: skip
    for service, script, names, url_path, body in models:
        env = {name: os.environ[name] for name in names}
        say(f"{service}: a twin job straight to Slurm, for the model's own first answer")
        first = first_answer_straight(service, script, env, url_path, body)
        say(f"{service}: a cold start through saia")
        cold, watched = cold_start(client, serve, service, url_path, body, first)
        colds.append(cold)
    say(pin_apart(serve, watched, login_port))
    say(f"{args.streams} streams each way")
    via_saia, straight = compare_streams(client, serve, watched, config, args.streams,
                                         args.max_tokens)  # fmt: skip
    return report(colds, via_saia, straight)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    missing = [name for name in (*NEEDED, *MODELS) if not os.environ.get(name)]
    if missing:
        say(f"missing {', '.join(missing)}: source the files `scripts/dev-cluster env` and "
            "`scripts/models env` print")
        return 2
    with ExitStack() as stack:
        try:
            return 0 if bench(args, stack) else 1
        except Failed as failure:
            say(f"failed: {failure}")
            return 1


if __name__ == "__main__":
    sys.exit(main())
