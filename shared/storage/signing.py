"""HMAC-signed URLs for the local storage backend (S3 signs its own).

A URL is ``{public_url}/storage/{key}?method=GET|PUT&expires=UNIX[&max_bytes=N][&filename=NAME]&sig=HEX``
where ``sig`` is HMAC-SHA256 over every one of those values (and, for a PUT, the Content-Type the client
must send, which travels as a header, as with S3). The API route that serves these URLs calls
:func:`verify` (through ``LocalStorage.verify_signed``) before reading or writing anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from shared.storage.base import SignatureError, SignatureExpiredError, check_key

# Derive a key of our own from the platform secret, so that a storage signature can never be replayed
# as a webhook or session signature made with the same SYNCTALK_SECRET_KEY (and vice versa).
_DOMAIN = b"synctalk/storage-url/v1"
METHODS = ("GET", "PUT")


@dataclass(frozen=True)
class SignedParams:
    """What a verified URL allows: one method on one key, until ``expires_at``, within these limits."""

    method: str
    key: str
    expires_at: datetime
    content_type: str | None = None  # PUT: the Content-Type the URL was signed for
    max_bytes: int | None = None  # PUT: the most bytes the upload may carry
    filename: str | None = None  # GET: serve as an attachment with this name


def _message(
    method: str, key: str, expires: int, content_type: str | None, max_bytes: int | None, filename: str | None
) -> bytes:
    # JSON of a list: unambiguous field boundaries whatever the values contain.
    return json.dumps([method, key, int(expires), content_type, max_bytes, filename]).encode()


def sign(
    secret: str,
    method: str,
    key: str,
    expires: int,
    *,
    content_type: str | None = None,
    max_bytes: int | None = None,
    filename: str | None = None,
) -> str:
    """The hex signature of one request shape."""
    derived = hmac.new(secret.encode(), _DOMAIN, hashlib.sha256).digest()
    msg = _message(method, key, expires, content_type, max_bytes, filename)
    return hmac.new(derived, msg, hashlib.sha256).hexdigest()


def verify(
    secret: str,
    method: str,
    key: str,
    expires: int,
    sig: str,
    *,
    content_type: str | None = None,
    max_bytes: int | None = None,
    filename: str | None = None,
    now: float | None = None,
) -> None:
    """Raise :class:`SignatureError` unless ``sig`` signs exactly these values, and
    :class:`SignatureExpiredError` when it does but ``expires`` has passed."""
    expected = sign(
        secret, method, key, expires, content_type=content_type, max_bytes=max_bytes, filename=filename
    )
    if not hmac.compare_digest(expected.encode(), str(sig).encode()):  # constant time
        hint = " (a PUT must send the Content-Type it was created with)" if method == "PUT" else ""
        raise SignatureError(f"The storage URL's signature does not match{hint}.", key=key)
    if (time.time() if now is None else now) > int(expires):
        raise SignatureExpiredError("The storage URL has expired; ask for a new one.", key=key)


def signed_url(
    public_url: str,
    secret: str,
    method: str,
    key: str,
    expires: int,
    *,
    content_type: str | None = None,
    max_bytes: int | None = None,
    filename: str | None = None,
) -> str:
    """The full URL (the Content-Type of a PUT is signed but sent as a header, not in the URL)."""
    query: dict[str, str | int] = {"method": method, "expires": int(expires)}
    if max_bytes is not None:
        query["max_bytes"] = int(max_bytes)
    if filename is not None:
        query["filename"] = filename
    query["sig"] = sign(
        secret, method, key, expires, content_type=content_type, max_bytes=max_bytes, filename=filename
    )
    return f"{public_url.rstrip('/')}/storage/{key}?{urlencode(query, quote_via=quote)}"


def parse_and_verify(
    secret: str,
    method: str,
    key: str,
    query: Mapping[str, str],
    *,
    content_type: str | None = None,
    now: float | None = None,
) -> SignedParams:
    """Check a request to ``/storage/{key}`` against its query parameters; the typed error otherwise."""
    check_key(key)
    method = method.upper()
    if method not in METHODS or query.get("method", "").upper() != method:
        raise SignatureError(f"This storage URL does not allow {method}.", key=key)
    try:
        expires = int(query["expires"])
        sig = query["sig"]
        max_bytes = int(query["max_bytes"]) if query.get("max_bytes") is not None else None
    except (KeyError, ValueError):
        raise SignatureError(
            "The storage URL is missing or has malformed signature fields.", key=key
        ) from None
    filename = query.get("filename")
    # A PUT signs the Content-Type its client must send; a GET is signed without one.
    content_type = ((content_type or "").strip() or None) if method == "PUT" else None
    verify(
        secret,
        method,
        key,
        expires,
        sig,
        content_type=content_type,
        max_bytes=max_bytes,
        filename=filename,
        now=now,
    )
    return SignedParams(
        method=method,
        key=key,
        expires_at=datetime.fromtimestamp(expires, UTC),
        content_type=content_type,
        max_bytes=max_bytes,
        filename=filename,
    )


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the exact name in RFC 5987 form (RFC 6266)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
