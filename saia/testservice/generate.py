"""Deterministic stand-ins for what a model would produce.

A "token" is one whitespace-separated word: cheap to compute and easy to reason
about in tests (a reply of max_tokens=3 is exactly three words).
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

REPLY_PREFIX = "echo:"
DEFAULT_MAX_TOKENS = 16
DEFAULT_EMBEDDING_DIMENSIONS = 8


def split_tokens(text: str) -> list[str]:
    """Split text into the words this service counts as tokens."""
    return text.split()


def count_tokens(texts: Iterable[str]) -> int:
    """Count the tokens of all texts together."""
    return sum(len(split_tokens(text)) for text in texts)


@dataclass(frozen=True)
class Reply:
    """The generated tokens of one completion and whether max_tokens cut them short."""

    tokens: tuple[str, ...]
    truncated: bool

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    @property
    def finish_reason(self) -> str:
        # Same meaning as OpenAI's: "length" tells the client the reply was cut short.
        return "length" if self.truncated else "stop"

    def stream_pieces(self) -> list[str]:
        """One delta per token; joined together they give exactly `text`."""
        return [token if index == 0 else f" {token}" for index, token in enumerate(self.tokens)]


def echo_reply(prompt: str, max_tokens: int) -> Reply:
    """Reply "echo: <words of the prompt>", cut to at most max_tokens words."""
    full = [REPLY_PREFIX, *split_tokens(prompt)]
    return Reply(tokens=tuple(full[:max_tokens]), truncated=len(full) > max_tokens)


def embed(text: str, dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """A unit-length vector derived from a hash of the text: equal texts, equal vectors."""
    needed = 4 * dimensions
    # SHA-256 in counter mode yields as many pseudo-random bytes as the dimension needs.
    stream = bytearray()
    counter = 0
    while len(stream) < needed:
        stream += hashlib.sha256(counter.to_bytes(4, "big") + text.encode()).digest()
        counter += 1
    words = struct.unpack(f">{dimensions}I", bytes(stream[:needed]))
    centred = [word / 2**31 - 1.0 for word in words]
    norm = math.sqrt(sum(value * value for value in centred))
    if norm == 0.0:
        # Astronomically unlikely, but a zero vector cannot be normalised.
        return [1.0] + [0.0] * (dimensions - 1)
    return [value / norm for value in centred]


def encode_embedding_base64(vector: list[float]) -> str:
    """OpenAI's "base64" encoding: little-endian float32 values, base64-encoded.

    The official Python client asks for this format unless told otherwise.
    """
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
