"""API keys as users hold them, ``sk-saia-<key id>-<secret>``, and how the proxy checks one.

The key id in the clear lets the proxy find the one recorded hash to compare,
in constant time, with the hash of the secret presented. A key is never logged
and never forwarded: the backend gets only the headers the proxy builds itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

from saia.domain.key import ApiKey
from saia.projections.api_keys import KeyView

PREFIX = "sk-saia-"
SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class IssuedKey:
    aggregate: ApiKey  # to be saved; holds only the hash
    key: str  # shown to the user once, never stored


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_key(user: str, label: str, at: datetime) -> IssuedKey:
    key_id = uuid4()
    secret = secrets.token_urlsafe(SECRET_BYTES)
    aggregate = ApiKey.issue(key_id, user, secret_sha256(secret), label, at)
    return IssuedKey(aggregate, f"{PREFIX}{key_id.hex}-{secret}")


def split_key(key: str) -> tuple[UUID, str] | None:
    if not key.startswith(PREFIX):
        return None
    key_id, _, secret = key[len(PREFIX) :].partition("-")
    try:
        return UUID(hex=key_id), secret
    except ValueError:
        return None


def key_id(key: str) -> str:
    """The key's id in the clear (never its secret), for a key that passed the check."""
    parts = split_key(key)
    return "" if parts is None else parts[0].hex


def bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class KeyChecker:
    """Maps a presented key to its user, or to None; reads the live projection."""

    def __init__(self, keys: Callable[[], Mapping[UUID, KeyView]]) -> None:
        self._keys = keys

    def user_of(self, key: str) -> str | None:
        parts = split_key(key)
        if parts is None:
            return None
        key_id, secret = parts
        view = self._keys().get(key_id)
        if view is None or view.revoked:
            return None
        if not hmac.compare_digest(secret_sha256(secret), view.secret_sha256):
            return None
        return view.user
