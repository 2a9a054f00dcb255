"""Server-Sent Event streams of completion chunks, one token at a time.

Each generator sleeps the token delay before every token, so a client reading the
stream sees chunks arrive spread over time, as from a real model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from saia.testservice import shapes
from saia.testservice.generate import Reply


async def chat_chunks(
    model: str, reply: Reply, prompt_tokens: int, include_usage: bool, token_delay: float
) -> AsyncIterator[bytes]:
    stream = shapes.StreamIdentity.start("chatcmpl", model, "chat.completion.chunk")
    for index, piece in enumerate(reply.stream_pieces()):
        await asyncio.sleep(token_delay)
        delta: shapes.JsonObject = {"content": piece}
        if index == 0:
            delta = {"role": "assistant", **delta}
        yield shapes.sse_event(shapes.chat_chunk(stream, delta))
    yield shapes.sse_event(shapes.chat_chunk(stream, {}, reply.finish_reason))
    if include_usage:
        chunk_usage = shapes.usage(prompt_tokens, len(reply.tokens))
        yield shapes.sse_event(shapes.usage_chunk(stream, chunk_usage))
    yield shapes.SSE_DONE


async def completion_chunks(
    model: str,
    replies: list[Reply],
    prompt_tokens: int,
    include_usage: bool,
    token_delay: float,
) -> AsyncIterator[bytes]:
    stream = shapes.StreamIdentity.start("cmpl", model, "text_completion")
    # Several prompts are streamed one after the other; `index` tells the choices apart.
    for index, reply in enumerate(replies):
        for piece in reply.stream_pieces():
            await asyncio.sleep(token_delay)
            yield shapes.sse_event(shapes.text_completion_chunk(stream, index, piece))
        yield shapes.sse_event(shapes.text_completion_chunk(stream, index, "", reply.finish_reason))
    if include_usage:
        completion_tokens = sum(len(reply.tokens) for reply in replies)
        chunk_usage = shapes.usage(prompt_tokens, completion_tokens)
        yield shapes.sse_event(shapes.usage_chunk(stream, chunk_usage))
    yield shapes.SSE_DONE
