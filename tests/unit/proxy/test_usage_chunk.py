"""Taking the usage chunk the proxy asked for out of a stream, however it is split."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from saia.proxy.usage_chunk import MAX_CARRY, UsageChunkFilter

CHUNKS = [
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"echo:"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":" usage"},"finish_reason":"stop"}]}\n\n',
]
USAGE = (b'data: {"id":"c","object":"chat.completion.chunk","choices":[],'
         b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n')  # fmt: skip
DONE = b"data: [DONE]\n\n"
WITH_USAGE = b"".join([*CHUNKS, USAGE, DONE])
WITHOUT_USAGE = b"".join([*CHUNKS, DONE])


def relayed(stream: bytes, cuts: list[int]) -> bytes:
    """What a client gets of ``stream`` arriving in pieces cut at ``cuts``."""
    unasked = UsageChunkFilter()
    edges = [0, *sorted(set(cuts)), len(stream)]
    out = [unasked.feed(stream[start:end]) for start, end in pairwise(edges)]
    return b"".join([*out, unasked.flush()])


CUTS = st.lists(st.integers(min_value=1, max_value=len(WITH_USAGE) - 1), max_size=12)


@given(cuts=CUTS)
def test_the_usage_chunk_is_taken_out_wherever_the_stream_is_cut(cuts: list[int]) -> None:
    """Split anywhere, even inside "usage", the rest of the stream comes through whole."""
    assert relayed(WITH_USAGE, cuts) == WITHOUT_USAGE


@given(cuts=CUTS)
def test_a_stream_without_a_usage_chunk_passes_unchanged(cuts: list[int]) -> None:
    """No usage chunk: the client gets every byte as the job sent it."""
    cuts = [cut for cut in cuts if cut < len(WITHOUT_USAGE)]
    assert relayed(WITHOUT_USAGE, cuts) == WITHOUT_USAGE


def test_events_that_only_mention_usage_are_kept() -> None:
    """A chunk with choices and usage (vLLM's continuous usage) and text that says
    "usage" are the client's; only the chunk with no choices goes."""
    continuous = (b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],'
                  b'"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n')  # fmt: skip
    quoted = b'data: {"choices":[{"delta":{"content":"\\"usage\\""}}]}\n\n'
    stream = continuous + quoted + USAGE + DONE
    assert relayed(stream, []) == continuous + quoted + DONE


def test_events_ended_by_crlf_are_filtered_too() -> None:
    """SSE lets events end with CRLF CRLF; those are found as well."""
    crlf = WITH_USAGE.replace(b"\n\n", b"\r\n\r\n")
    assert relayed(crlf, [len(crlf) // 2]) == WITHOUT_USAGE.replace(b"\n\n", b"\r\n\r\n")


def test_a_complete_event_goes_on_at_once_and_an_unfinished_one_at_the_end() -> None:
    """Nothing complete is held back; a last event never ended is passed on as it is."""
    unasked = UsageChunkFilter()
    assert unasked.feed(CHUNKS[0] + CHUNKS[1][:10]) == CHUNKS[0]
    assert unasked.feed(CHUNKS[1][10:]) == CHUNKS[1]
    assert unasked.feed(b"data: {unfinished") == b""
    assert unasked.flush() == b"data: {unfinished"


def test_a_stream_that_never_ends_an_event_is_not_held_back_without_bound() -> None:
    """Beyond MAX_CARRY what waits for its event's end goes on unfiltered."""
    unasked = UsageChunkFilter()
    piece = b"x" * (MAX_CARRY // 2)
    assert unasked.feed(piece) == b""
    assert unasked.feed(piece + b"x") == piece + piece + b"x"
