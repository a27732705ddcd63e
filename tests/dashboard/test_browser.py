"""The dashboard in a real headless Chromium against ``synctalk serve`` on the embedded default with real
worker processes: sign in, upload a tiny subject, watch its stages advance live (no reload) to ready
with the dataset report and training curves, upload speech, play the finished render, cancel and retry,
and another tenant's key sees none of it. One platform and one subject for the whole module (training
is the slow part); the tests run in order and build on each other. Screenshots of every page go to
``SYNCTALK_TEST_ARTIFACTS`` (default tests/artifacts/)."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from browser_helpers import ARGS, CHROMIUM, artifacts_dir, shot, sign_in, wait_js
from platform_helpers import Served, free_port, platform_env, synctalk

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (requirements.lock)"
)

TRAIN_TIMEOUT_MS = 600_000


class World:
    """What the tests share: the platform, two tenants' keys, the browser, and what earlier tests made."""

    served: Served
    key_a: str
    key_b: str
    browser: object
    subject_id: str = ""
    render_id: str = ""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    env = platform_env(root / "data", port)
    synctalk(env, "migrate")
    w = World()
    w.key_a = synctalk(env, "keys", "create", "--tenant", "studio").strip().splitlines()[-1]
    w.key_b = synctalk(env, "keys", "create", "--tenant", "someone-else").strip().splitlines()[-1]
    w.served = Served(env, port, root / "serve.log")
    playwright = sync_api.sync_playwright().start()
    try:
        w.browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield w
    except BaseException:
        print(w.served.output())
        raise
    finally:
        if getattr(w, "browser", None) is not None:
            w.browser.close()
        playwright.stop()
        w.served.stop()


@pytest.fixture(scope="module")
def page_a(world):
    context = world.browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    yield page
    context.close()


def test_sign_in_refuses_a_bad_key_and_accepts_a_good_one(world, page_a):
    base = world.served.url
    page_a.goto(f"{base}/")
    assert page_a.url.startswith(f"{base}/login"), "an anonymous visit goes to the sign-in page"
    page_a.keyboard.type(world.key_a[:-3] + "xyz")
    page_a.keyboard.press("Enter")
    assert "not valid" in page_a.locator("#login-error").inner_text()
    shot(page_a, "01-login-refused")
    # the key never reaches a script: the cookie is HttpOnly, and nothing is in storage
    sign_in(page_a, base, world.key_a)
    cookies = {c["name"]: c for c in page_a.context.cookies()}
    session = cookies["synctalk_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax" and world.key_a not in session["value"]
    assert page_a.evaluate("document.cookie").find("synctalk_session") == -1
    assert page_a.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == "{}{}"
    assert "No subjects yet" in page_a.locator("#empty").inner_text()
    shot(page_a, "02-subjects-empty")
    page_a.errors.clear()  # the refused sign-in's 401 was logged as a failed load; nothing else may be


def test_upload_a_subject_and_watch_it_train_live(world, page_a, sample_subject, tmp_path):
    base = world.served.url
    # the list, open in a second tab, must follow the new subject live too
    watcher = page_a.context.new_page()
    watcher.goto(f"{base}/")
    wait_js(watcher, "document.getElementById('live').textContent === 'live'")

    page_a.goto(f"{base}/upload")
    # a file that is not a video is refused before anything is sent
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a video")
    page_a.set_input_files("#subject-file", str(bogus))
    page_a.click("#subject-form button[type=submit]")
    assert "is not a video file" in page_a.locator("#subject-uploads li").first.inner_text()
    shot(page_a, "03-upload-refused")

    video = tmp_path / "ann.mp4"
    shutil.copy(sample_subject.video, video)
    page_a.set_input_files("#subject-file", str(video))
    page_a.fill("#subject-name", "Ann <script>alert(1)</script>")
    page_a.click("#subject-form button[type=submit]")
    page_a.wait_for_url(f"{base}/subjects/*", timeout=60_000)
    world.subject_id = page_a.url.rsplit("/", 1)[1]
    assert page_a.locator("h1").inner_text() == "Ann <script>alert(1)</script>"  # shown as text, escaped
    page_a.evaluate("window.__loadedOnce = true")  # gone if the page reloads

    # the stages advance live: each one seen running or done, in order, with no reload
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + TRAIN_TIMEOUT_MS / 1000
    shots = set()
    while time.monotonic() < deadline:
        state = page_a.evaluate(
            "Array.from(document.querySelectorAll('#timeline li[data-stage]'))"
            ".map(li => [li.dataset.stage, li.dataset.status])"
        )
        for pair in state:
            if pair not in seen:
                seen.append(tuple(pair))
        status = page_a.locator(".job-progress [data-field=status]").inner_text()
        if (
            ("train", "running") in seen
            and "training" not in shots
            and page_a.locator("#legend .key").count()
        ):
            shot(page_a, "04-subject-training")
            shots.add("training")
        if status in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.5)
    assert status == "succeeded", world.served.output()
    wait_js(page_a, "document.querySelector('#metrics dl') !== null", timeout_ms=20_000)
    assert page_a.evaluate("window.__loadedOnce") is True, "the page reloaded instead of updating in place"
    assert ("train", "running") in seen and ("train", "succeeded") in seen
    assert ("ready", "succeeded") in seen
    assert seen.index(("train", "running")) < seen.index(("train", "succeeded"))

    # the dataset report's pictures load (swapped in when preprocessing finished), with words
    images = page_a.locator("#report img")
    assert images.count() == 4
    wait_js(
        page_a,
        "Array.from(document.querySelectorAll('#report img')).every(i => i.complete && i.naturalWidth > 0)",
    )
    assert "Usable frames" in page_a.locator("#report").inner_text()
    # the curves are drawn: the loss plot has ink, the legend names the training phases
    ink = page_a.evaluate(
        "(() => { const c = document.getElementById('plot-loss'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4)"
        " if (d[i]) n++; return n; })()"
    )
    assert ink > 500
    assert "head: steps" in page_a.locator("#legend").inner_text()
    shot(page_a, "05-subject-ready")

    # the list in the other tab followed it live: succeeded at 100 %, with no reload
    row = watcher.locator(f"tr[data-id='{world.subject_id}']")
    assert row.locator("[data-field=status]").inner_text() == "succeeded"
    assert row.locator("[data-field=pct]").inner_text() == "100%"
    shot(watcher, "06-subjects-list")
    watcher.close()
    assert not page_a.errors, page_a.errors


def test_upload_speech_and_play_the_render(world, page_a, sample_subject_b, tmp_path):
    base = world.served.url
    page_a.goto(f"{base}/subjects/{world.subject_id}")
    speech = tmp_path / "line.wav"
    shutil.copy(sample_subject_b.speech, speech)
    wrong = tmp_path / "slides.pdf"
    wrong.write_bytes(b"%PDF-1.4")
    page_a.set_input_files("#speech-files", [str(speech), str(wrong)])
    page_a.click("#speech-form button[type=submit]")
    items = page_a.locator("#speech-uploads li")
    wait_js(page_a, "document.querySelector('#speech-uploads li a') !== null", timeout_ms=60_000)
    assert "is not an audio file" in items.nth(1).inner_text()
    page_a.wait_for_selector("#renders tr[data-id]")
    shot(page_a, "07-speech-uploaded")
    page_a.locator("#speech-uploads li a").click()
    page_a.wait_for_url(f"{base}/renders/*")
    world.render_id = page_a.url.rsplit("/", 1)[1]

    page_a.wait_for_selector("video#player", timeout=TRAIN_TIMEOUT_MS)
    assert page_a.locator(".job-progress [data-field=status]").inner_text() == "succeeded"
    wait_js(
        page_a,
        "(() => { const v = document.getElementById('player'); return v.readyState >= 2 && v.duration > 1; })()",
        timeout_ms=30_000,
    )
    duration = page_a.evaluate("document.getElementById('player').duration")
    assert 4.0 < duration < 8.0, duration  # the speech track is 6 s
    page_a.evaluate(
        "document.getElementById('player').muted = true; document.getElementById('player').play()"
    )
    wait_js(page_a, "document.getElementById('player').currentTime > 0.5", timeout_ms=20_000)
    assert page_a.locator("#download").get_attribute("href").endswith(f"/v1/renders/{world.render_id}/video")
    assert page_a.locator("#retry").is_hidden() and page_a.locator("#cancel").is_hidden()
    assert "Quality checks" in page_a.content()
    shot(page_a, "08-render-playing")
    assert not page_a.errors, page_a.errors


def test_cancel_and_retry_a_render(world, page_a, sample_subject_b, tmp_path):
    base = world.served.url
    page_a.goto(f"{base}/subjects/{world.subject_id}")
    speech = tmp_path / "again.wav"
    shutil.copy(sample_subject_b.speech, speech)
    page_a.set_input_files("#speech-files", str(speech))
    page_a.click("#speech-form button[type=submit]")
    wait_js(page_a, "document.querySelector('#speech-uploads li a') !== null", timeout_ms=60_000)
    page_a.locator("#speech-uploads li a").click()
    page_a.wait_for_url(f"{base}/renders/*")
    first = page_a.url.rsplit("/", 1)[1]
    page_a.locator("#cancel").click()
    wait_js(
        page_a,
        "document.querySelector('.job-progress [data-field=status]').textContent === 'canceled'",
        timeout_ms=60_000,
    )
    page_a.wait_for_selector("#retry:not([hidden])")
    shot(page_a, "09-render-canceled")
    page_a.locator("#retry").focus()
    page_a.keyboard.press("Enter")  # buttons work from the keyboard
    page_a.wait_for_url(lambda url: "/renders/" in url and not url.endswith(first))
    assert page_a.locator(".job-progress [data-field=status]").inner_text() in (
        "queued",
        "running",
        "succeeded",
    )
    page_a.locator("#cancel").click()  # no need to spend the CPU on it


def test_another_tenant_sees_none_of_it(world):
    base = world.served.url
    context = world.browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, base, world.key_b)
        assert page.locator("#subjects tbody tr").count() == 0
        assert "No subjects yet" in page.locator("#empty").inner_text()
        for path in (f"/subjects/{world.subject_id}", f"/renders/{world.render_id}"):
            response = page.goto(f"{base}{path}")
            assert response.status == 404 and "Nothing here" in page.content()
        shot(page, "10-other-tenant-404")
        for path in (
            f"/v1/subjects/{world.subject_id}/curves",
            f"/v1/subjects/{world.subject_id}/report/images/frames.jpg",
            f"/v1/renders/{world.render_id}/video",
        ):
            status = page.evaluate(f"fetch('/dashboard/api{path}').then(r => r.status)")
            assert status == 404, path
    finally:
        context.close()
    # and without a session, the dashboard's API answers nothing
    assert httpx.get(f"{base}/dashboard/api/v1/subjects").status_code == 401


def test_phone_width_and_screenshots(world):
    context = world.browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        sign_in(page, world.served.url, world.key_a)
        for name, path in (
            ("11-phone-subjects", "/"),
            ("12-phone-subject", f"/subjects/{world.subject_id}"),
            ("13-phone-render", f"/renders/{world.render_id}"),
        ):
            page.goto(f"{world.served.url}{path}")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} scrolls sideways by {overflow} px on a phone"
            shot(page, name)
    finally:
        context.close()
    assert any(artifacts_dir().glob("*.png"))
