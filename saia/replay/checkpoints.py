"""Signed checkpoints of the hash chain, one JSON line each, in a file kept off the hub.

A checkpoint names the position and chain link it seals and lists the (id, leaf) of
each event since the previous checkpoint; Ed25519 signs all of it. The list costs
about 30 bytes an event and lets ``verify`` name the exact bad position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "saia-replay checkpoint v1"


class KeyFileError(ValueError):
    """A key file that is missing or not an Ed25519 key."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    position: int  # notification id of the last event sealed
    count: int  # events sealed from the start of the log
    link: str  # hex chain link after that event
    events: tuple[tuple[int, str], ...]  # (notification id, hex leaf) since the previous one
    signature: str = ""

    def signed_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT,
                "position": self.position,
                "count": self.count,
                "link": self.link,
                "events": self.events,
            },
            option=orjson.OPT_SORT_KEYS,
        )

    def to_line(self) -> bytes:
        return (
            orjson.dumps(
                {
                    "position": self.position,
                    "count": self.count,
                    "link": self.link,
                    "events": self.events,
                    "signature": self.signature,
                }
            )
            + b"\n"
        )


def sign(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> Checkpoint:
    signature = key.sign(checkpoint.signed_bytes()).hex()
    return Checkpoint(
        checkpoint.position, checkpoint.count, checkpoint.link, checkpoint.events, signature
    )


def signature_valid(checkpoint: Checkpoint, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(bytes.fromhex(checkpoint.signature), checkpoint.signed_bytes())
    except (InvalidSignature, ValueError):
        return False
    return True


def read(path: Path) -> Iterator[Checkpoint]:
    """Checkpoints one at a time: the file of a long log is not loaded whole."""
    if not path.exists():
        return
    with path.open("rb") as lines:
        for line in lines:
            if line.strip():
                raw = orjson.loads(line)
                yield Checkpoint(
                    raw["position"],
                    raw["count"],
                    raw["link"],
                    tuple((int(i), str(h)) for i, h in raw["events"]),
                    raw["signature"],
                )


def private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_read(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(_read(path))
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read: {error.strerror}") from None


def new_key_pair(private_path: Path, public_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
