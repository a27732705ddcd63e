"""The dashboard's sign-in session: an API key pasted once becomes a signed, HttpOnly cookie.

The cookie never holds the key. It holds the tenant and the key's public prefix, signed (HMAC-SHA256)
with a key derived from the settings' secret key: the server only issues it after checking the full
key, and checks on every request that the key still exists and is not revoked (revoking a key ends
its dashboard sessions at once). Sessions last ``MAX_AGE_S``.

CSRF: the cookie is ``SameSite=Lax`` (a shared link opened from a mail or chat keeps the person
signed in; cross-site POSTs, fetches and images never carry it), and every state-changing request
must also carry a token derived from the session (the ``X-CSRF-Token`` header from JS, a hidden
field in forms), which another site can neither read nor guess.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select

from shared.db.api_keys import PREFIX_LEN, verify_key
from shared.db.models import ApiKey

COOKIE = "synctalk_session"
LOGIN_COOKIE = "synctalk_login"  # the sign-in form's own CSRF token (double submit), before any session
MAX_AGE_S = 12 * 3600
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class DashboardSession:
    tenant_id: str
    key_prefix: str
    issued_at: int
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signing_key(secret_key: str) -> bytes:
    # a key of its own, so a session signature can never be mistaken for any other MAC made with the secret
    return hmac.new(secret_key.encode(), b"synctalk dashboard session v1", hashlib.sha256).digest()


def _mac(secret_key: str, purpose: bytes, payload: bytes) -> bytes:
    return hmac.new(_signing_key(secret_key), purpose + b"\0" + payload, hashlib.sha256).digest()


def encode(session: DashboardSession, secret_key: str) -> str:
    body = {"t": session.tenant_id, "k": session.key_prefix, "iat": session.issued_at, "n": session.nonce}
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{payload}.{_b64(_mac(secret_key, b'session', payload.encode()))}"


def decode(value: str | None, secret_key: str, now: float | None = None) -> DashboardSession | None:
    """The session a cookie value carries, or None (missing, tampered with, signed with another secret,
    or expired). Says nothing about the key's state: see ``resolve``."""
    if not value or value.count(".") != 1:
        return None
    payload, signature = value.split(".")
    try:
        expected = _mac(secret_key, b"session", payload.encode())
        if not hmac.compare_digest(_unb64(signature), expected):
            return None
        body = json.loads(_unb64(payload))
        session = DashboardSession(str(body["t"]), str(body["k"]), int(body["iat"]), str(body["n"]))
    except (ValueError, KeyError, TypeError):
        return None
    age = (time.time() if now is None else now) - session.issued_at
    return session if 0 <= age <= MAX_AGE_S else None


def csrf_token(session: DashboardSession, secret_key: str) -> str:
    return _b64(_mac(secret_key, b"csrf", f"{session.tenant_id}:{session.nonce}".encode()))


def csrf_ok(session: DashboardSession, secret_key: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(token, csrf_token(session, secret_key))


def key_is_live(sessions, session: DashboardSession) -> bool:
    """The key the session was opened with still exists, belongs to its tenant and is not revoked."""
    with sessions() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.prefix == session.key_prefix)).first()
        return row is not None and row.revoked_at is None and row.tenant_id == session.tenant_id


def sign_in(sessions, secret_key: str, key: str) -> DashboardSession | None:
    """A new session for a valid, unrevoked API key; None for anything else."""
    key = key.strip()
    if not key:
        return None
    with sessions() as s:
        row = s.scalars(select(ApiKey).where(ApiKey.prefix == key[:PREFIX_LEN])).first()
        if row is None or row.revoked_at is not None or not verify_key(key, row.key_hash, secret_key):
            return None
        return DashboardSession(row.tenant_id, row.prefix, int(time.time()), secrets.token_urlsafe(16))


def cookie_options(public_url: str) -> dict:
    """HttpOnly and SameSite=Lax always; Secure when the dashboard is served over https."""
    return {
        "httponly": True,
        "samesite": "lax",
        "secure": public_url.lower().startswith("https://"),
        "path": "/",
    }
