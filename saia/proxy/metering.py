"""Token counts from a response, whole or streamed, without parsing every chunk."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

TAIL_BYTES = 16 * 1024  # the usage chunk comes last; older bytes are never looked at


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


def usage_of(document: object) -> Usage | None:
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    # The Responses API names them input and output tokens.
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


class Meter:
    """Counts the bytes of a response and keeps its tail to find the usage in."""

    def __init__(self, streaming: bool, limit: int = TAIL_BYTES) -> None:
        self.streaming = streaming
        self.bytes_out = 0
        self._limit = limit
        self._tail = bytearray()
        self._whole = bytearray()
        self._whole_too_big = False

    def feed(self, chunk: bytes) -> None:
        self.bytes_out += len(chunk)
        if self.streaming:
            self._tail += chunk
            if len(self._tail) > 2 * self._limit:
                del self._tail[: len(self._tail) - self._limit]
        elif not self._whole_too_big:
            # An answer's usage sits anywhere in its JSON: keep it whole, up to a bound.
            self._whole += chunk
            if len(self._whole) > 64 * self._limit:
                self._whole_too_big = True
                self._whole.clear()

    def complete(self) -> bool:
        """Whether a stream's last event so far is ``data: [DONE]``: its client has it all,
        whether or not the job has ended its body yet."""
        return self.streaming and bytes(self._tail).rstrip().endswith(b"data: [DONE]")

    def usage(self) -> Usage:
        if not self.streaming:
            try:
                return usage_of(orjson.loads(self._whole)) or Usage()
            except orjson.JSONDecodeError:
                return Usage()
        for line in reversed(bytes(self._tail).split(b"\n")):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                found = usage_of(orjson.loads(payload))
            except orjson.JSONDecodeError:
                continue  # the tail may begin inside an event
            if found is not None:
                return found
        return Usage()
