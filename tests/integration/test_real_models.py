"""Real models through the whole chain: the official OpenAI client, ``saia serve``, the
SSH session, the login node's entrypoint, Slurm, and a job running the model on CPU.

all-MiniLM-L6-v2 (int8 ONNX, saia.models.embeddings) and Gemma 3 270M (GGUF,
llama.cpp's llama-server), both staged by ``scripts/models``; each service starts
from zero instances, so the first request of each waits for a real cold start.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from saia import catalog, config
from saia.projections.accounting import daily_usage
from saia.proxy import key_commands
from saia.serve import Serving
from tests.integration.cluster import REPO, cancel_service_jobs, unique, wait_for
from tests.integration.hub_serving import hub_head
from tests.integration.test_entrypoint_ssh import (
    Link,
    link,  # noqa: F401 (a fixture, used by name)
    write_config,
)
from tests.net import free_port

pytestmark = [pytest.mark.ssh, pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

CHAT_ENV = ("SAIA_CHAT_MODEL_FILE", "SAIA_CHAT_TEMPLATE_FILE", "SAIA_LLAMA_SERVER")
MODELS = ("SAIA_EMBEDDINGS_MODEL_DIR", *CHAT_ENV)
TIME_LIMIT_MINUTES = 10
PORT_MIN, PORT_MAX = 20600, 20699
COLD_START_TIMEOUT = 240.0  # a job start, plus loading a model on a loaded 2-core machine
PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]
ALIAS = "google/gemma-3-270m"  # a Hugging Face-style name for the chat service


@dataclass
class Models:
    serving: Serving
    base_url: str
    key: str
    embeddings: str
    chat: str

    def client(self, timeout: float = COLD_START_TIMEOUT) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.key, max_retries=0,
                             timeout=timeout)  # fmt: skip

    def accounted(self, user: str) -> tuple[int, int, int]:
        usage = [u for (who, _, _), u in daily_usage(self.serving.hub.db).items() if who == user]
        return (sum(u.requests for u in usage), sum(u.prompt_tokens for u in usage),
                sum(u.completion_tokens for u in usage))  # fmt: skip


def hub_config(folder: Path, login: Link, embeddings: str, chat: str, port: int) -> Path:
    common = (f"job_expiry_time = {TIME_LIMIT_MINUTES}\nlead_time = 60\n"
              f"port_min = {PORT_MIN}\nport_max = {PORT_MAX}\nidle_time = 900\n"
              "minimum_number_instances = 0\nmaximum_number_instances = 1\n")  # fmt: skip
    text = hub_head(login, port) + f"""\
max_wait_seconds = {COLD_START_TIMEOUT:g}

[[services]]
id = "{embeddings}"
name = "all-MiniLM-L6-v2"
input = ["text"]
output = ["embedding"]
sbatch = "embeddings.sbatch"
inferences_per_instance = 8
{common}
[[services]]
id = "{chat}"
name = "Gemma 3 270M"
aliases = ["{ALIAS}"]
sbatch = "llama-server.sbatch"
inferences_per_instance = 2
{common}"""
    path = folder / "saia.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def models(link: Link, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:  # noqa: F811
    missing = [name for name in MODELS if not os.environ.get(name)]
    if missing:
        pytest.skip(f"needs the staged models ({', '.join(missing)}): run scripts/models all "
                    "and source what `scripts/models env` prints")  # fmt: skip
    embeddings, chat = unique("minilm"), unique("gemma")
    scripts = link.config.parent / "model-sbatch"
    scripts.mkdir(mode=0o755, exist_ok=True)
    for name in ("embeddings.sbatch", "llama-server.sbatch"):
        shutil.copy(REPO / "sbatch" / name, scripts / name)
        (scripts / name).chmod(0o644)
    rule = '{{ sbatch = "{}", time_limit = {}, env = {{ {} }} }}'
    model_dir = f'SAIA_EMBEDDINGS_MODEL_DIR = "{os.environ["SAIA_EMBEDDINGS_MODEL_DIR"]}"'
    chat_env = ", ".join(f'{name} = "{os.environ[name]}"' for name in CHAT_ENV)
    write_config(link, sbatch_dir=f'"{scripts}"', **{
        f"services.{embeddings}": rule.format("embeddings.sbatch", TIME_LIMIT_MINUTES, model_dir),
        f"services.{chat}": rule.format("llama-server.sbatch", TIME_LIMIT_MINUTES, chat_env),
    })  # fmt: skip
    port = free_port()
    folder = tmp_path_factory.mktemp("models")
    settings = config.load(hub_config(folder, link, embeddings, chat, port))
    serving = Serving(settings)
    catalog.sync(serving.hub, settings.services, time.time())
    _, key = key_commands.issue(serving.hub.log, "model-user", "test", time.time())
    thread = threading.Thread(target=serving.run, name="saia-serve", daemon=True)
    thread.start()
    try:
        wait_for(lambda: serving.server.started, 15, "the proxy to listen")
        found = Models(serving, f"http://127.0.0.1:{port}/v1", key, embeddings, chat)
        wait_for(lambda: _works(found.client(timeout=5)), 15, "the key to be accepted")
        yield found
    finally:
        serving.stop()
        thread.join(timeout=60)
        for service in (embeddings, chat):
            cancel_service_jobs(service)
        write_config(link)


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_related_sentences_are_closer_than_unrelated_ones(models: Models) -> None:
    """all-MiniLM-L6-v2, from zero instances, through the whole chain."""
    sentences = ["A man is eating food.", "A man is eating a piece of bread.",
                 "The new movie is awesome.", "The stock market fell sharply today."]  # fmt: skip
    answer = models.client().embeddings.create(model=models.embeddings, input=sentences)
    vectors = [item.embedding for item in sorted(answer.data, key=lambda item: item.index)]
    assert all(len(vector) == 384 for vector in vectors)
    assert all(abs(np.linalg.norm(vector) - 1) < 1e-3 for vector in vectors)
    related = cosine(vectors[0], vectors[1])
    unrelated = [cosine(vectors[0], vectors[2]), cosine(vectors[0], vectors[3]),
                 cosine(vectors[1], vectors[3])]  # fmt: skip
    assert related > 0.6, related
    assert related > max(unrelated) + 0.3, (related, unrelated)
    # The model's own count: its tokenizer's word pieces, [CLS] and [SEP] included.
    tokenizer = Tokenizer.from_file(f"{os.environ['SAIA_EMBEDDINGS_MODEL_DIR']}/tokenizer.json")
    counted = sum(sum(encoding.attention_mask) for encoding in tokenizer.encode_batch(sentences))
    assert answer.usage.prompt_tokens == counted, (answer.usage, counted)


def test_a_chat_stream_delivers_tokens_one_by_one_with_usage(models: Models) -> None:
    """Gemma 3 270M streams: one token per chunk, as generated, and the usage at the end."""
    stream = models.client().chat.completions.create(
        model=models.chat, messages=PROMPT, max_tokens=24, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    pieces: list[tuple[float, str]] = []
    usage = []
    for chunk in stream:
        if chunk.usage is not None:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append((time.monotonic(), choice.delta.content))
    assert len(usage) == 1
    text = "".join(piece for _, piece in pieces)
    assert len(pieces) >= 8 and text.strip(), pieces
    # One generated token per chunk, each sent as soon as it was generated: the chunks
    # arrive spread over the generation, not in one burst at its end.
    assert usage[0].completion_tokens == len(pieces), (usage[0], len(pieces))
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(pieces)]
    assert sum(gap > 0.005 for gap in gaps) >= 0.8 * len(gaps), gaps
    assert usage[0].prompt_tokens > 5


def test_a_hugging_face_style_alias_names_the_chat_model(models: Models) -> None:
    """The OpenAI client retrieves and asks the model by an alias with '/'."""
    client = models.client()
    assert client.models.retrieve(ALIAS).id == ALIAS
    answer = client.completions.create(model=ALIAS, prompt="The sky is", max_tokens=4,
                                       temperature=0)  # fmt: skip
    assert answer.choices[0].text and answer.usage is not None
    assert 1 <= answer.usage.completion_tokens <= 4


def test_accounting_matches_the_models_own_token_counts(models: Models) -> None:
    """What the event log records equals what the model reported, request by request."""
    _, key = key_commands.issue(models.serving.hub.log, "counted", "test", time.time())
    client = openai.OpenAI(base_url=models.base_url, api_key=key, max_retries=0,
                           timeout=COLD_START_TIMEOUT)  # fmt: skip
    wait_for(lambda: _works(client), 15, "the key to be accepted")
    prompt = completion = 0
    whole = client.chat.completions.create(model=models.chat, messages=PROMPT,  # type: ignore[arg-type]
                                           max_tokens=16, temperature=0)  # fmt: skip
    assert whole.usage is not None
    prompt += whole.usage.prompt_tokens
    completion += whole.usage.completion_tokens
    # Streamed without asking for usage: saia asks the model for it, meters it, and the
    # client sees no usage chunk. Greedy decoding repeats the counts of the same request
    # streamed with usage, which is what the model reported for it.
    for asked in (True, False):
        options = {"include_usage": True} if asked else None
        stream = client.chat.completions.create(
            model=models.chat, messages=PROMPT, max_tokens=12, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options=options,
        )  # fmt: skip
        usage = [chunk.usage for chunk in stream if chunk.usage is not None]
        if asked:
            assert len(usage) == 1
            streamed = usage[0]
        else:
            assert usage == [], usage
        prompt += streamed.prompt_tokens
        completion += streamed.completion_tokens
    embedded = client.embeddings.create(model=models.embeddings, input=["one", "two words"])
    prompt += embedded.usage.prompt_tokens
    sent = 4

    def counted() -> tuple[int, int, int] | None:
        totals = models.accounted("counted")
        return totals if totals[0] == sent else None

    assert wait_for(counted, 15, "the requests to be accounted") == (sent, prompt, completion)


def _works(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError:
        return False
    return True
