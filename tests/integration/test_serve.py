"""The whole chain: the official openai client -> ``saia serve`` -> sshd -> the login
node's ``saia-entrypoint session`` -> a Slurm job running the test service.

One hub serves the module's tests (see hub_serving). The link-cut test stops the
dev sshd: run this module alone, not beside other users of that sshd.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import openai
import pytest

from saia.projections.accounting import daily_usage
from saia.proxy import key_commands
from saia.proxy.keys import split_key
from tests.integration.cluster import wait_for
from tests.integration.hub_serving import (
    RATE_LIMIT_PER_MINUTE,
    TOKEN_DELAY,
    RunningHub,
    as_the_entrypoint,
    auth,
    running_hub,
    served_by,
)
from tests.integration.test_entrypoint_ssh import (
    Link,
    link,  # noqa: F401 (a fixture, used by name)
)
from tests.integration.test_ssh_link import sshd_stopped

pytestmark = [pytest.mark.ssh, pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

PROMPT = [{"role": "user", "content": "one two three four five six seven eight nine ten"}]


@pytest.fixture(scope="module")
def hub(link: Link, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:  # noqa: F811
    with running_hub(tmp_path_factory.mktemp("serve"), link) as running:
        wait_for(lambda: len(running.ready(running.chat)) >= 2, 120, "two ready chat jobs")
        yield running


def test_the_openai_client_gets_models_chat_streams_completions_and_embeddings(
    hub: RunningHub,
) -> None:
    client = hub.client(hub.key("alice"))
    models = {model.id: model for model in client.models.list()}
    assert models[hub.chat].model_extra is not None
    assert models[hub.chat].model_extra["status"] == "ready"
    assert models[hub.cold].model_extra is not None
    assert models[hub.cold].model_extra["status"] in ("offline", "loading", "ready")

    chat = client.chat.completions.create(model=hub.chat, messages=PROMPT, max_tokens=4)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == "echo: one two three"
    assert chat.usage is not None and chat.usage.prompt_tokens == 10

    arrivals = []
    stream = client.chat.completions.create(model=hub.chat, messages=PROMPT, max_tokens=10,  # type: ignore[arg-type]
                                            stream=True)  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic(), chunk.choices[0].delta.content))
    assert "".join(text for _, text in arrivals).startswith("echo: one two")
    assert len(arrivals) >= 8
    # One by one, as the job made them: not all at once at the end.
    spread = arrivals[-1][0] - arrivals[0][0]
    assert spread >= 0.5 * TOKEN_DELAY * (len(arrivals) - 1), arrivals

    completion = client.completions.create(model=hub.chat, prompt="alpha beta gamma", max_tokens=3)
    assert completion.choices[0].text == "echo: alpha beta"

    embedding = client.embeddings.create(model=hub.chat, input=["alpha", "beta"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) > 0


def test_a_service_at_zero_starts_for_a_waiting_request_and_a_stream_hears_keepalives(
    hub: RunningHub,
) -> None:
    assert hub.ready(hub.cold) == [], "the cold service must start at zero instances"
    key = hub.key("carol")
    lines: list[str] = []

    def stream() -> None:
        body = {"model": hub.cold, "messages": PROMPT, "max_tokens": 3, "stream": True}
        with httpx.stream("POST", f"{hub.base_url}/chat/completions", json=body,
                          headers=auth(key), timeout=120) as answer:  # fmt: skip
            lines.extend(answer.iter_lines())

    waiting_stream = threading.Thread(target=stream)
    waiting_stream.start()
    started = time.monotonic()
    answer = hub.client(key, timeout=120).chat.completions.create(
        model=hub.cold, messages=PROMPT, max_tokens=3,  # type: ignore[arg-type]
    )
    waited = time.monotonic() - started
    waiting_stream.join(timeout=120)
    assert answer.choices[0].message.content == "echo: one two"
    assert waited > 1.0, "it was answered too soon to have waited for a cold start"
    assert any(line.startswith(":") for line in lines), "no keep-alive comment while waiting"
    assert lines[-1] == "data: [DONE]" or "data: [DONE]" in lines
    assert hub.ready(hub.cold), "the started job is routable"


def test_refused_requests_never_reach_a_backend(hub: RunningHub) -> None:
    jobs = hub.ready(hub.chat)
    before = sum(served_by(job) for job in jobs)
    key = hub.key("mallory")
    url = f"{hub.base_url}/chat/completions"
    body = {"model": hub.chat, "messages": PROMPT}

    wrong = hub.client("sk-saia-" + "0" * 32 + "-not-a-secret")
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=hub.chat, messages=PROMPT)  # type: ignore[arg-type]
    no_key = httpx.post(url, json=body, timeout=10)
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as unknown:
        hub.client(key).chat.completions.create(model="no-such-model", messages=PROMPT)  # type: ignore[arg-type]
    assert unknown.value.status_code == 404
    malformed = httpx.post(url, content=b'{"model": ', headers=auth(key), timeout=10)
    assert malformed.status_code == 400, malformed.text
    assert malformed.json()["error"]["message"]
    oversized = {**body, "messages": [{"role": "user", "content": "x" * 100_000}]}
    too_big = httpx.post(url, json=oversized, headers=auth(key), timeout=10)
    assert too_big.status_code == 413, too_big.text

    revoked = hub.key("trudy")
    parts = split_key(revoked)
    assert parts is not None
    key_commands.revoke(hub.serving.hub.log, parts[0], "test", time.time())
    wait_for(lambda: not hub.accepts(revoked), 15, "the revoked key to be refused")
    with pytest.raises(openai.AuthenticationError):
        hub.client(revoked).chat.completions.create(model=hub.chat, messages=PROMPT)  # type: ignore[arg-type]

    # A burst beyond the limit; requests for an unknown model count and go nowhere.
    greedy = hub.key("greedy")
    with httpx.Client(headers=auth(greedy), timeout=10) as session:
        for sent in range(1, 2 * RATE_LIMIT_PER_MINUTE):  # noqa: B007 (read after the loop)
            answer = session.post(url, json={**body, "model": "no-such-model"})
            if answer.status_code == 429:
                break
            assert answer.status_code == 404
    assert answer.status_code == 429 and sent > RATE_LIMIT_PER_MINUTE // 2
    assert answer.headers["x-ratelimit-limit-requests"] == str(RATE_LIMIT_PER_MINUTE)
    assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    assert answer.headers["x-ratelimit-reset-requests"]
    assert answer.json()["error"]["code"]

    assert sum(served_by(job) for job in jobs) == before


@dataclass
class Outcome:
    started: float
    ended: float
    error: str  # "" when answered in full


@contextmanager
def load(workers: int, request: Callable[[], None]) -> Iterator[list[Outcome]]:
    """Run ``request`` in a loop on each worker while in the block; every outcome so far."""
    outcomes: list[Outcome] = []
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                request()
            except Exception as error:  # the outcome is what is tested
                outcomes.append(Outcome(started, time.monotonic(), repr(error)))
            else:
                outcomes.append(Outcome(started, time.monotonic(), ""))

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def small_chats(hub: RunningHub, model: str, users: list[str],
                timeout: float) -> Callable[[], None]:  # fmt: skip
    """A small chat completion for load(): each worker with a client (and key) of its
    own, one of ``users``, and paced to stay under the per-user rate limit."""
    handed = iter([hub.client(hub.key(user), timeout=timeout) for user in users])
    turn = threading.local()
    lock = threading.Lock()

    def small_chat() -> None:
        if not hasattr(turn, "client"):
            with lock:
                turn.client = next(handed)
        try:
            answer = turn.client.chat.completions.create(model=model, messages=PROMPT,
                                                         max_tokens=2)  # fmt: skip
            assert answer.choices[0].message.content == "echo: one"
        finally:
            time.sleep(0.25)

    return small_chat


def test_a_backend_killed_under_load_fails_only_its_own_requests_and_is_replaced(
    hub: RunningHub,
) -> None:
    wait_for(lambda: len(hub.ready(hub.chat)) >= 2, 120, "two ready chat jobs")
    client = hub.client(hub.key("loader"))

    def streamed_chat() -> None:
        stream = client.chat.completions.create(model=hub.chat, messages=PROMPT, max_tokens=30,  # type: ignore[arg-type]
                                                stream=True)  # fmt: skip
        finished = [chunk for chunk in stream if chunk.choices and chunk.choices[0].finish_reason]
        assert finished, "the stream ended without a finish_reason"

    since = time.time()
    with load(8, streamed_chat) as outcomes:
        time.sleep(3)
        victim = hub.ready(hub.chat)[0]
        httpx.post(f"http://{victim.node}:{victim.port}/admin/exit", json={"code": 1},
                   headers=as_the_entrypoint(victim), timeout=10)  # fmt: skip
        killed_at = time.monotonic()
        time.sleep(8)

    failed = [outcome for outcome in outcomes if outcome.error]
    assert failed, "the kill hit no request in flight: the test proves nothing"
    assert all(outcome.started < killed_at + 0.5 for outcome in failed), failed
    later = [outcome for outcome in outcomes if outcome.started > killed_at + 0.5]
    assert len(later) >= 8 and not any(outcome.error for outcome in later)
    # The log agrees: every request that broke off was on the killed job.
    broken = [event for event in hub.events("saia.Request.Finished")
              if event.status == 502 and event.timestamp.timestamp() >= since]  # fmt: skip
    assert broken and {event.job for event in broken} == {str(victim.id)}
    wait_for(
        lambda: len([job for job in hub.ready(hub.chat) if job.id != victim.id]) >= 2,
        120, "a replacement of the killed job",
    )  # fmt: skip


def test_requests_to_a_service_whose_only_job_died_wait_for_its_replacement(
    hub: RunningHub,
) -> None:
    """The one job of a service dies: later requests wait for the replacement, none gets 502."""
    warm = hub.client(hub.key("solo-warm"), timeout=120)
    warm.chat.completions.create(model=hub.cold, messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
    small_chat = small_chats(hub, hub.cold, [f"solo-{n}" for n in range(2)], timeout=60)
    since = time.time()
    with load(2, small_chat) as outcomes:
        time.sleep(1)
        [victim] = hub.ready(hub.cold)
        httpx.post(f"http://{victim.node}:{victim.port}/admin/exit", json={"code": 1},
                   headers=as_the_entrypoint(victim), timeout=10)  # fmt: skip
        killed_at = time.monotonic()
        wait_for(
            lambda: [o for o in list(outcomes) if o.started > killed_at + 0.2 and not o.error],
            60, "a request answered after the kill",
        )  # fmt: skip
        time.sleep(1)

    failed = [outcome for outcome in outcomes if outcome.error]
    assert all(outcome.started < killed_at + 0.2 for outcome in failed), failed
    later = [outcome for outcome in outcomes if outcome.started > killed_at + 0.2]
    assert len(later) >= 2 and not any(outcome.error for outcome in later), later
    assert max(outcome.ended - outcome.started for outcome in later) > 1.0, "nobody waited"
    answered_by = {event.job for event in hub.events("saia.Request.Finished")
                   if event.status == 200 and event.timestamp.timestamp() >= since}  # fmt: skip
    assert answered_by - {str(victim.id)}, "no request was answered by a replacement"


def test_a_cut_link_fails_requests_cleanly_and_service_resumes(
    hub: RunningHub, link: Link  # noqa: F811
) -> None:
    wait_for(lambda: len(hub.ready(hub.chat)) >= 2, 120, "two ready chat jobs")
    small_chat = small_chats(hub, hub.chat, [f"cut-{n}" for n in range(4)], timeout=30)
    with load(4, small_chat) as outcomes:
        time.sleep(2)
        cut_at = time.monotonic()
        with sshd_stopped(int(link.port)):
            time.sleep(3)
        restored_at = time.monotonic()
        back = wait_for(
            lambda: min((o.started for o in list(outcomes)
                         if o.started > restored_at and not o.error), default=None),
            60, "a request answered after the link came back",
        )  # fmt: skip
        time.sleep(3)

    failed = [outcome for outcome in outcomes if outcome.error]
    assert failed, "no request met the cut link: the test proves nothing"
    for outcome in failed:
        assert outcome.started > cut_at - 1 and outcome.started < restored_at + 10, outcome
        assert outcome.ended - outcome.started < 30, outcome  # none hung
        # An error answer (502/503 with an OpenAI error body); or, for an answer that
        # had begun when the link went, the connection closed: its 200 was out already.
        assert outcome.error.startswith(("InternalServerError", "APIConnectionError")), outcome
    resumed = [o for o in outcomes if o.started > back]
    assert len(resumed) >= 4 and not any(outcome.error for outcome in resumed), resumed
    downs = [event for event in hub.events("saia.Link.Down")]
    assert downs, "the link's loss was not recorded"


def test_accounting_equals_what_was_sent(hub: RunningHub) -> None:
    client = hub.client(hub.key("counted"))
    prompt = completion = 0
    for max_tokens in (2, 4, 6):
        answer = client.chat.completions.create(model=hub.chat, messages=PROMPT,  # type: ignore[arg-type]
                                                max_tokens=max_tokens)  # fmt: skip
        assert answer.usage is not None
        prompt += answer.usage.prompt_tokens
        completion += answer.usage.completion_tokens
    # The proxy asks for usage when the client did not, and takes it out of its stream:
    # the test service counts words, so the prompt and the text give the tokens then.
    for asked in (True, False):
        options = {"include_usage": True} if asked else None
        stream = client.chat.completions.create(model=hub.chat, messages=PROMPT, max_tokens=5,  # type: ignore[arg-type]
                                                stream=True, stream_options=options)  # fmt: skip
        chunks = list(stream)
        usage = [(c.usage.prompt_tokens, c.usage.completion_tokens) for c in chunks if c.usage]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert usage == ([(10, len(text.split()))] if asked else [])
        prompt += 10
        completion += len(text.split())
    embedded = client.embeddings.create(model=hub.chat, input="alpha beta gamma")
    prompt += embedded.usage.prompt_tokens
    sent = 6

    def counted() -> tuple[int, int, int, int] | None:
        usage = [u for (user, _, _), u in daily_usage(hub.serving.hub.db).items()
                 if user == "counted"]  # fmt: skip
        totals = (
            sum(u.requests for u in usage),
            sum(u.errors for u in usage),
            sum(u.prompt_tokens for u in usage),
            sum(u.completion_tokens for u in usage),
        )
        return totals if totals[0] == sent else None

    assert wait_for(counted, 15, "the requests to be accounted") == (sent, 0, prompt, completion)
