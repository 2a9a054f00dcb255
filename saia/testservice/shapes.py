"""OpenAI response bodies: plain dicts shaped like the API's objects."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson

from saia.testservice.generate import Reply

JsonObject = dict[str, object]

SSE_DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def sse_event(payload: JsonObject) -> bytes:
    """One Server-Sent Event carrying a JSON payload, as OpenAI streams do."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_body(message: str, param: str | None, code: str | None) -> JsonObject:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


def usage(prompt_tokens: int, completion_tokens: int) -> JsonObject:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_list(model: str, created: int) -> JsonObject:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "saia"}],
    }


def chat_completion(model: str, reply: Reply, prompt_tokens: int) -> JsonObject:
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, len(reply.tokens)),
    }


@dataclass(frozen=True)
class StreamIdentity:
    """What every chunk of one stream repeats: OpenAI clients expect one id throughout."""

    completion_id: str
    created: int
    model: str
    object: str

    @classmethod
    def start(cls, prefix: str, model: str, obj: str) -> StreamIdentity:
        return cls(completion_id=new_id(prefix), created=now(), model=model, object=obj)

    def chunk(self, choices: list[JsonObject]) -> JsonObject:
        return {
            "id": self.completion_id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }


def chat_chunk(
    stream: StreamIdentity, delta: JsonObject, finish_reason: str | None = None
) -> JsonObject:
    return stream.chunk(
        [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    )


def text_completion(model: str, replies: list[Reply], prompt_tokens: int) -> JsonObject:
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [
            {
                "index": index,
                "text": reply.text,
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
            for index, reply in enumerate(replies)
        ],
        "usage": usage(prompt_tokens, sum(len(reply.tokens) for reply in replies)),
    }


def text_completion_chunk(
    stream: StreamIdentity, index: int, text: str, finish_reason: str | None = None
) -> JsonObject:
    return stream.chunk(
        [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}]
    )


def usage_chunk(stream: StreamIdentity, chunk_usage: JsonObject) -> JsonObject:
    """The extra chunk that `stream_options.include_usage` asks for: no choices, only usage."""
    return {**stream.chunk([]), "usage": chunk_usage}


def embedding_list(
    model: str, embeddings: list[list[float] | str], prompt_tokens: int
) -> JsonObject:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": embedding}
            for index, embedding in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def response(model: str, reply: Reply, input_tokens: int) -> JsonObject:
    """A Responses API object: one assistant message of output text."""
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": now(),
        "status": "incomplete" if reply.truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if reply.truncated else None,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": new_id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": len(reply.tokens),
            "total_tokens": input_tokens + len(reply.tokens),
        },
    }
