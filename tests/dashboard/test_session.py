"""The dashboard's session cookie and CSRF token, on their own: what a signature proves, what it refuses."""

from __future__ import annotations

import time

from services.dashboard import session as sessions

SECRET = "a-test-secret"


def _session(**changes) -> sessions.DashboardSession:
    fields = {"tenant_id": "t1", "key_prefix": "stk_abcdefgh", "issued_at": int(time.time()), "nonce": "n1"}
    return sessions.DashboardSession(**{**fields, **changes})


def test_a_signed_session_reads_back_and_never_holds_the_key():
    s = _session()
    value = sessions.encode(s, SECRET)
    assert sessions.decode(value, SECRET) == s
    assert "stk_abcdefgh" not in value  # base64 JSON: the prefix only, never a full key
    assert sessions.decode(value, "another-secret") is None


def test_a_tampered_cookie_is_refused():
    value = sessions.encode(_session(), SECRET)
    payload, signature = value.split(".")
    other = sessions.encode(_session(tenant_id="t2"), SECRET).split(".")[0]
    assert sessions.decode(f"{other}.{signature}", SECRET) is None  # someone else's tenant, old signature
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert sessions.decode(f"{payload}.{flipped}", SECRET) is None
    for junk in ("", "x", "a.b.c", "....", f"{payload}.", f".{signature}", "%%.%%"):
        assert sessions.decode(junk, SECRET) is None


def test_a_session_ends_after_its_age():
    old = _session(issued_at=int(time.time()) - sessions.MAX_AGE_S - 5)
    assert sessions.decode(sessions.encode(old, SECRET), SECRET) is None
    future = _session(issued_at=int(time.time()) + 3600)
    assert sessions.decode(sessions.encode(future, SECRET), SECRET) is None


def test_the_csrf_token_is_bound_to_the_session_and_the_secret():
    a, b = _session(nonce="n1"), _session(nonce="n2")
    token = sessions.csrf_token(a, SECRET)
    assert sessions.csrf_ok(a, SECRET, token)
    assert not sessions.csrf_ok(b, SECRET, token)  # another sign-in of the same tenant
    assert not sessions.csrf_ok(a, "another-secret", token)
    assert not sessions.csrf_ok(a, SECRET, None) and not sessions.csrf_ok(a, SECRET, "")


def test_cookies_are_secure_over_https_only():
    assert sessions.cookie_options("https://dub.example.com")["secure"] is True
    plain = sessions.cookie_options("http://127.0.0.1:8000")
    assert plain["secure"] is False and plain["httponly"] is True and plain["samesite"] == "lax"
