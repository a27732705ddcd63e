"""Fast checks of the client's parts: backoff, deterministic keys, manifests, the state file's resume
logic, the import footprint. No server."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from services.client.bulk.keys import batch_key, file_sha256, upload_key
from services.client.bulk.manifest import ManifestError, read_manifest
from services.client.bulk.state import State
from services.client.errors import NotFound, RateLimited, ServerError, error_from, parse_retry_after
from services.client.retry import RetryPolicy, should_retry

REPO = Path(__file__).resolve().parents[2]
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)


def test_importing_the_client_pulls_in_no_heavy_stack():
    code = (
        "import sys, services.client, services.client.bulk, services.cli.remote_cmd\n"
        "print([m for m in ('torch', 'mediapipe', 'sqlalchemy', 'fastapi', 'numpy', 'cv2', 'celery') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap():
    policy = RetryPolicy(attempts=10, base_s=0.5, cap_s=4.0, rng=random.Random(1))
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 4.0)]:
        waits = [policy.backoff(attempt) for _ in range(300)]
        assert min(waits) >= 0 and max(waits) <= ceiling
        assert max(waits) > 0.8 * ceiling and min(waits) < 0.2 * ceiling  # spread over the whole range
    assert policy.delay(10) is None  # no try left


def test_retry_after_is_honoured_and_an_excessive_one_is_not_waited_for():
    policy = RetryPolicy(attempts=5, base_s=0.1, max_retry_after_s=60, rng=random.Random(2))
    assert all(3.0 <= policy.delay(1, retry_after=3.0) <= 3.1 for _ in range(50))
    assert policy.delay(1, retry_after=3600) is None
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


def test_which_answers_are_retried():
    assert all(should_retry(s) for s in (429, 500, 502, 503, 504))
    assert not any(should_retry(s) for s in (400, 401, 404, 413, 422))
    assert should_retry(409, "idempotency_in_progress") and not should_retry(409, "idempotency_conflict")


def test_errors_are_typed_and_carry_the_problem_json():
    problem = {
        "type": "urn:x",
        "title": "Not found",
        "status": 404,
        "detail": "There is no render 'x'.",
        "code": "not_found",
    }
    err = error_from(404, problem)
    assert isinstance(err, NotFound) and (err.status, err.code, err.detail) == (
        404,
        "not_found",
        problem["detail"],
    )
    assert err.problem == problem
    limited = error_from(429, {"code": "rate_limited", "detail": "slow down"}, {"retry-after": "12"})
    assert isinstance(limited, RateLimited) and limited.retry_after == 12.0
    assert isinstance(error_from(502, "<html>bad gateway</html>"), ServerError)


def test_keys_are_deterministic_and_change_with_what_is_sent(tmp_path):
    a = tmp_path / "a.wav"
    a.write_bytes(WAV + b"1")
    h = file_sha256(a)
    assert h == file_sha256(a)
    assert upload_key(h, 10, "audio/wav", "a.wav") == upload_key(h, 10, "audio/wav", "a.wav")
    assert upload_key(h, 10, "audio/wav", "a.wav") != upload_key(h, 10, "audio/wav", "a.wav", generation=1)
    items = [("r1", h, "up1", "fullframe", 0), ("r2", h, "up1", "crop", 0)]
    key = batch_key("s1", items)
    assert key == batch_key("s1", list(items)) and len(key) <= 200
    assert key != batch_key("s2", items)
    assert key != batch_key("s1", items[::-1])
    assert key != batch_key("s1", [items[0], ("r2", h, "up1", "crop", 1)])  # a retry is a new request


def _tracks(folder: Path) -> None:
    folder.mkdir()
    (folder / "one.wav").write_bytes(WAV + b"1")
    (folder / "two.wav").write_bytes(WAV + b"2")
    (folder / "text.wav").write_text("not audio at all")
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not an audio extension")


def test_csv_manifest_resolves_paths_and_reports_bad_rows(tmp_path):
    _tracks(tmp_path / "t")
    m = tmp_path / "m.csv"
    m.write_text(
        "audio,ref,mode\nt/one.wav,first,\nt/two.wav,,crop\nt/gone.wav,g,\nt/text.wav,x,\nt/one.wav,y,sideways\n,z,\n"
    )
    rows = list(read_manifest(m))
    assert [(r.line, r.ref, r.mode, r.error is None) for r in rows] == [
        (1, "first", None, True), (2, "two", "crop", True), (3, "g", None, False), (4, "x", None, False),
        (5, "y", "sideways", False), (6, "z", None, False),
    ]  # fmt: skip
    assert rows[0].audio == tmp_path / "t" / "one.wav"
    assert "not found" in rows[2].error and "not an audio file" in rows[3].error and "mode" in rows[4].error


def test_jsonl_and_folder_manifests(tmp_path):
    _tracks(tmp_path / "t")
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio": "t/one.wav", "ref": "a"}) + "\n\nnot json\n" + json.dumps([1]) + "\n"
                 + json.dumps({"audio": str(tmp_path / "t" / "two.wav"), "ref": "b", "mode": "portrait"}) + "\n")  # fmt: skip
    rows = list(read_manifest(m))
    assert [(r.ref, r.error is None) for r in rows] == [
        ("a", True),
        ("row-2", False),
        ("row-3", False),
        ("b", True),
    ]
    assert rows[3].mode == "portrait"
    folder = list(read_manifest(tmp_path / "t"))
    assert [(r.ref, r.error is None) for r in folder] == [
        ("empty", False),
        ("one", True),
        ("text", False),
        ("two", True),
    ]
    with pytest.raises(ManifestError):
        list(read_manifest(tmp_path / "m.txt"))
    (tmp_path / "noaudio.csv").write_text("file,ref\nx,y\n")
    with pytest.raises(ManifestError):
        list(read_manifest(tmp_path / "noaudio.csv"))


def test_the_manifest_is_read_lazily(tmp_path):
    m = tmp_path / "big.csv"
    with open(m, "w") as fh:
        fh.write("audio,ref\n")
        for i in range(100_000):
            fh.write(f"missing{i}.wav,r{i}\n")
    rows = read_manifest(m)
    assert next(rows).ref == "r0"  # the first row comes before the rest is read


def test_state_survives_reopening_and_resends_an_unanswered_batch(tmp_path):
    st = State(tmp_path)
    with st:
        st.add_file("h1", 10, "a.wav", "audio/wav")
        for i in range(3):
            st.add_item(f"r{i}", i + 1, "a.wav", "fullframe", "h1", None)
        st.add_item("bad", 4, "x.wav", "fullframe", None, "x.wav: file not found")
        st.set_upload("h1", "up1")
    ready = st.ready_for_batch(2)
    assert [i.ref for i in ready] == ["r0", "r1"]
    with st:
        st.assign("k1", [i.ref for i in ready])
    st.close()  # a crash after recording the batch, before (or while) sending it

    st = State(tmp_path)
    assert st.unsent_batches() == ["k1"]
    assert [i.ref for i in st.items("batch = ? AND status = 'assigned'", ("k1",))] == ["r0", "r1"]
    assert [i.ref for i in st.ready_for_batch(10)] == ["r2"]  # not in two batches
    with st:
        st.submitted("k1", "b1", [("r0", "R0"), ("r1", "R1")], 0.0)
    assert st.unsent_batches() == [] and st.counts() == {"submitted": 2, "new": 1, "bad": 1}
    assert st.open_batches() == [("k1", "b1")] and st.waiting_in("k1") == 2
    with st:
        st.set_status("r0", "failed", "no_face: none")
        st.set_status("r1", "downloaded")
    # a rerun leaves failures alone; --retry-failed gives them a new attempt and forgets bad rows
    assert st.counts() == {"failed": 1, "downloaded": 1, "new": 1, "bad": 1}
    with st:
        assert st.retry_failed() == 2
    again = st.items("ref = 'r0'")[0]
    assert (again.status, again.attempt, again.render_id, again.batch) == ("new", 1, None, None)
    assert st.line_of("bad") is None
    st.close()


def test_a_refused_batch_puts_its_items_back_and_a_refused_file_marks_its_rows_bad(tmp_path):
    st = State(tmp_path)
    with st:
        st.add_file("good", 1, "g.wav", "audio/wav")
        st.add_file("evil", 1, "e.wav", "audio/wav")
        st.add_item("a", 1, "g.wav", "fullframe", "good", None)
        st.add_item("b", 2, "e.wav", "fullframe", "evil", None)
        st.add_item("c", 3, "e.wav", "fullframe", "evil", None)
        st.set_upload("good", "u1")
        st.set_upload("evil", "u2")
        st.assign("k", ["a", "b", "c"])
    with st:
        st.fail_hash("evil", "no_audio_stream: e.wav has no audio stream")
        st.drop_batch("k")
    assert st.counts() == {"new": 1, "bad": 2} and st.unsent_batches() == []
    assert [i.ref for i in st.ready_for_batch(10)] == ["a"]
    st.close()
