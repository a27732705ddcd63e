"""The dashboard's routes without a browser, on the real app (a migrated SQLite file, a storage folder):
sign-in and its refusals, the cookie's attributes, CSRF on every change, tenant scoping of the pages and
of ``/dashboard/api``, escaping and security headers; and the v1 additions it reads (curves, report
pictures, retry)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from api_helpers import Api, add_tenant, make_api, new_render, new_subject
from sqlalchemy import update
from starlette.testclient import TestClient

from gpu_worker.preprocess.report_files import curves_key, report_image_key
from services.dashboard import session as sessions
from shared.db.models import ApiKey, Render, utcnow
from shared.jobs import keys


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    made = make_api(tmp_path)
    yield made
    made.close()


def browser(api: Api) -> TestClient:
    """A client with no API key, like a browser (it keeps cookies)."""
    return api.client("")


def sign_in(client: TestClient, key: str, next_path: str = "/"):
    form = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)[1]
    return client.post(
        "/login", data={"key": key, "login_token": token, "next": next_path}, follow_redirects=False
    )


def csrf_of(page_html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]*)">', page_html)[1]


def _set_render(api: Api, render_id: str, **values) -> None:
    with api.platform.sessions() as s:
        s.execute(update(Render).where(Render.id == render_id).values(**values))
        s.commit()


# --- sign-in ------------------------------------------------------------------------------------------
def test_a_bad_key_is_refused_in_words_and_gets_no_session(api):
    client = browser(api)
    for key, words in ((api.key[:-4] + "abcd", "not valid"), ("stk_" + "x" * 40, "not valid"), ("", "Paste")):
        r = sign_in(client, key)
        assert r.status_code == 401 and words in r.text
        assert sessions.COOKIE not in r.cookies
    assert client.get("/", follow_redirects=False).headers["location"] == "/login?next=/"


def test_a_good_key_signs_in_with_a_safe_cookie(api):
    client = browser(api)
    r = sign_in(client, api.key, "/upload")
    assert r.status_code == 303 and r.headers["location"] == "/upload"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(sessions.COOKIE + "="))
    attributes = cookie.lower()
    assert "httponly" in attributes and "samesite=lax" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # served over http here; https public URLs get Secure (test_session)
    assert api.key not in cookie
    assert client.get("/upload").status_code == 200


def test_sign_in_needs_the_forms_own_token(api):
    client = browser(api)
    r = client.post(
        "/login", data={"key": api.key, "login_token": "guess", "next": "/"}, follow_redirects=False
    )
    assert r.status_code == 403 and sessions.COOKIE not in r.cookies


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:x"]
)
def test_sign_in_never_redirects_off_site(api, target):
    r = sign_in(browser(api), api.key, target)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_revoking_the_key_ends_its_sessions(api):
    client = browser(api)
    sign_in(client, api.key)
    assert client.get("/dashboard/api/v1/subjects").status_code == 200
    with api.platform.sessions() as s:
        s.execute(update(ApiKey).where(ApiKey.tenant_id == api.tenant_id).values(revoked_at=utcnow()))
        s.commit()
    assert client.get("/dashboard/api/v1/subjects").status_code == 401
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")


def test_sign_out_needs_the_csrf_token_and_clears_the_cookie(api):
    client = browser(api)
    sign_in(client, api.key)
    page = client.get("/upload")
    assert client.post("/logout", data={"csrf": "wrong"}, follow_redirects=False).status_code == 403
    r = client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/dashboard/api/v1/subjects").status_code == 401


# --- CSRF and the key: what the dashboard's API accepts ------------------------------------------------
def test_changes_need_the_pages_csrf_token(api):
    subject = new_subject(api.platform, api.tenant_id, "anna")
    render = new_render(api.platform, api.tenant_id, subject)
    client = browser(api)
    sign_in(client, api.key)
    path = f"/dashboard/api/v1/renders/{render}/cancel"
    refused = client.post(path)
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
    other = browser(api)  # another sign-in's token is not this one's
    sign_in(other, api.key)
    assert client.post(path, headers={"X-CSRF-Token": csrf_of(other.get("/").text)}).status_code == 403
    assert client.get(f"/dashboard/api/v1/renders/{render}").json()["status"] == "queued"
    ok = client.post(path, headers={"X-CSRF-Token": csrf_of(client.get("/").text)})
    assert ok.status_code == 202 and ok.json()["status"] == "canceled"


def test_the_dashboards_api_takes_the_cookie_not_a_bearer_key(api):
    keyed = api.client()  # Authorization: Bearer <key>, no cookie
    r = keyed.get("/dashboard/api/v1/subjects")
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    assert keyed.get("/v1/subjects").status_code == 200  # /v1 itself is unchanged
    for path in ("/dashboard/api/v1/batches/x", "/dashboard/api/v1/webhooks", "/dashboard/api/openapi.json"):
        signed = browser(api)
        sign_in(signed, api.key)
        assert signed.get(path).status_code == 404, path  # only what the pages need is mounted


# --- tenant scoping -----------------------------------------------------------------------------------
def test_another_tenant_sees_none_of_it(api):
    p = api.platform
    subject = new_subject(p, api.tenant_id, "anna")
    render = new_render(p, api.tenant_id, subject)
    p.storage.put_bytes(report_image_key(api.tenant_id, subject, "frames.jpg"), b"\xff\xd8 a jpeg")
    p.storage.put_bytes(
        curves_key(api.tenant_id, subject), json.dumps({"points": [], "total_steps": 0}).encode()
    )
    _, b_key = add_tenant(p, "other-studio")
    b = browser(api)
    sign_in(b, b_key)
    listing = b.get("/")
    assert "anna" not in listing.text and "No subjects yet" in listing.text
    for page in (f"/subjects/{subject}", f"/renders/{render}"):
        r = b.get(page)
        assert r.status_code == 404 and "anna" not in r.text
    token = csrf_of(listing.text)
    for method, path in (
        ("GET", f"/v1/subjects/{subject}"),
        ("GET", f"/v1/subjects/{subject}/curves"),
        ("GET", f"/v1/subjects/{subject}/report/images"),
        ("GET", f"/v1/subjects/{subject}/report/images/frames.jpg"),
        ("GET", f"/v1/renders/{render}"),
        ("GET", f"/v1/renders/{render}/video"),
        ("POST", f"/v1/renders/{render}/cancel"),
        ("POST", f"/v1/renders/{render}/retry"),
        ("POST", f"/v1/subjects/{subject}/cancel"),
    ):
        r = b.request(method, f"/dashboard/api{path}", headers={"X-CSRF-Token": token})
        assert r.status_code == 404, (method, path, r.text)
    assert b.get("/dashboard/api/v1/subjects").json()["items"] == []
    assert b.get("/dashboard/api/v1/renders").json()["items"] == []
    a = api.client()
    assert a.get(f"/v1/renders/{render}").json()["status"] == "queued"


# --- pages --------------------------------------------------------------------------------------------
def test_pages_escape_names_and_carry_security_headers(api):
    subject = new_subject(api.platform, api.tenant_id, '<img src=x onerror="alert(1)">')
    client = browser(api)
    sign_in(client, api.key)
    for path in ("/", f"/subjects/{subject}", "/upload", "/login"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "<img src=x" not in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert api.key not in r.text
    assert "&lt;img src=x" in client.get("/").text


def test_the_subjects_list_filters_and_pages(api):
    ids = [new_subject(api.platform, api.tenant_id, f"person {i}") for i in range(27)]
    client = browser(api)
    sign_in(client, api.key)
    first = client.get("/")
    assert first.text.count("<tr data-id=") == 25 and "Older" in first.text
    older = re.search(r'href="(/\?cursor=[^"]+)"', first.text)[1]
    second = client.get(older.replace("&amp;", "&"))
    assert second.text.count("<tr data-id=") == 2 and ids[0] in second.text and "Newest" in second.text
    failed = client.get("/?status=failed")
    assert "<tr data-id=" not in failed.text and "No subject is failed" in failed.text
    assert client.get("/?status=bogus").status_code == 200  # an unknown filter shows everything


# --- the v1 additions ---------------------------------------------------------------------------------
def test_curves_and_report_pictures_come_from_storage(api):
    p = api.platform
    subject = new_subject(p, api.tenant_id, "anna")
    client = api.client()
    assert client.get(f"/v1/subjects/{subject}/curves").json()["points"] == []
    assert client.get(f"/v1/subjects/{subject}/report/images").json()["items"] == []
    missing = client.get(f"/v1/subjects/{subject}/report/images/frames.jpg")
    assert missing.status_code == 404 and "after preprocessing" in missing.json()["detail"]
    points = [{"stage": "head", "step": 10, "loss": 0.1, "psnr": 20.0}]
    p.storage.put_bytes(
        curves_key(api.tenant_id, subject), json.dumps({"points": points, "total_steps": 40}).encode()
    )
    p.storage.put_bytes(report_image_key(api.tenant_id, subject, "coverage.png"), b"\x89PNG a png")
    curves = client.get(f"/v1/subjects/{subject}/curves").json()
    assert curves["points"] == points and curves["total_steps"] == 40
    listed = client.get(f"/v1/subjects/{subject}/report/images").json()["items"]
    assert [i["name"] for i in listed] == ["coverage.png"]
    image = client.get(listed[0]["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == b"\x89PNG a png"
    assert client.get(f"/v1/subjects/{subject}/report/images/..%2Fsource.mp4").status_code == 404


def test_retry_makes_a_new_render_of_the_same_speech(api):
    p = api.platform
    subject = new_subject(p, api.tenant_id, "anna")
    render = new_render(p, api.tenant_id, subject)
    audio = keys.upload_key(api.tenant_id, "speech")
    p.storage.put_bytes(audio, b"RIFF speech")
    _set_render(api, render, audio_key=audio, mode="portrait", start_frame=7, ref="line 1")
    client = api.client()
    r = client.post(f"/v1/renders/{render}/retry")
    assert r.status_code == 409 and r.json()["code"] == "not_retryable"  # still queued
    _set_render(api, render, status="failed", error_code="render_failed", error_message="it broke")
    r = client.post(f"/v1/renders/{render}/retry", headers={"Idempotency-Key": "retry-1"})
    assert r.status_code == 202, r.text
    new = r.json()
    assert (
        new["id"] != render
        and new["retry_of"] == render
        and r.headers["location"] == f"/v1/renders/{new['id']}"
    )
    assert (new["mode"], new["start_frame"], new["ref"], new["subject_id"]) == (
        "portrait",
        7,
        "line 1",
        subject,
    )
    again = client.post(f"/v1/renders/{render}/retry", headers={"Idempotency-Key": "retry-1"})
    assert again.json()["id"] == new["id"]  # a retried request is the same retry
    p.storage.delete(audio)
    gone = client.post(f"/v1/renders/{render}/retry")
    assert gone.status_code == 409 and gone.json()["code"] == "audio_gone"
