"""API keys: shown once at creation, stored only as a keyed hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_LEN = 12


def hash_key(key: str, secret: str) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new key and its public prefix (``stk_`` + random); the prefix finds the row, the hash proves it."""
    key = "stk_" + secrets.token_urlsafe(32)
    return key, key[:PREFIX_LEN]


def verify_key(key: str, stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(hash_key(key, secret), stored_hash)
