"""The client against the real API (``synctalk api`` on the embedded default, no workers: renders are
created and stay queued), behind a real fault-injecting proxy; resumed downloads against moto's S3."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest
from client_helpers import REPO, ApiOnly, count_renders, remote, speech_wav, tiny_video
from fault_proxy import FaultProxy, Rule
from platform_helpers import MotoS3, free_port, platform_env, synctalk

from services.client import AsyncClient, Client, NotFound, RetryPolicy, Unauthorized
from services.client.bulk import DubOptions, dub
from services.client.bulk.state import State

FAST = RetryPolicy(attempts=6, base_s=0.05, cap_s=0.5)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The API, a key and a subject (never trained: no worker runs here)."""
    tmp = tmp_path_factory.mktemp("api")
    port = free_port()
    env = platform_env(tmp / "data", port, rate_limit_per_minute="100000", rate_limit_ip_per_minute="100000")
    synctalk(env, "migrate")
    key = synctalk(env, "keys", "create", "--tenant", "studio").strip().splitlines()[-1]
    served = ApiOnly(env, port, tmp / "api.log")
    try:
        with Client(served.url, key, retry=FAST) as c:
            subject = c.upload_subject(tiny_video(tmp / "person.mp4"), name="Ann")
        yield {"url": served.url, "key": key, "subject": subject["id"], "tmp": tmp}
    finally:
        served.stop()


def _manifest(folder: Path, n: int, seed0: int, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["audio,ref"]
    for i in range(n):
        speech_wav(folder / f"line{i}.wav", 1.0, seed0 + i)
        lines.append(f"line{i}.wav,take-{seed0}-{i}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n" + extra)
    return manifest


def test_errors_are_typed_problems(api):
    with Client(api["url"], api["key"], retry=FAST) as c:
        with pytest.raises(NotFound) as err:
            c.get_render("no-such-render")
        assert err.value.code == "not_found" and err.value.problem["status"] == 404
        with pytest.raises(NotFound):
            c.create_batch("no-such-subject", [{"upload_id": "x", "ref": "r"}])
    with Client(api["url"], "stk_wrong_key", retry=FAST) as c, pytest.raises(Unauthorized) as err:
        c.list_renders()
    assert err.value.status == 401


def test_500_429_and_dropped_connections_are_retried_to_success_without_duplicates(api, tmp_path):
    track = speech_wav(tmp_path / "one.wav", 1.0, 7)
    rules = [
        Rule("POST", "/v1/uploads", "500", times=2),
        Rule("GET", "/v1/renders", "429", times=1, retry_after=1),
        Rule("POST", "/v1/subjects/", "drop_after", times=1),  # created, but the answer never arrives
        Rule("GET", "/v1/subjects/", "drop", times=2),  # closed before reaching the API
    ]
    proxy = FaultProxy(api["url"], rules)
    try:
        with (
            Client(api["url"], api["key"], retry=FAST) as direct,
            Client(proxy.url, api["key"], retry=FAST) as c,
        ):
            before = count_renders(direct, api["subject"])
            assert c.get_subject(api["subject"])["id"] == api["subject"]
            render = c.render_file(api["subject"], track, ref="retried")
            t0 = time.monotonic()
            page = c.list_renders(subject_id=api["subject"], limit=500)
            waited = time.monotonic() - t0
            assert (
                count_renders(direct, api["subject"]) == before + 1
            )  # the dropped POST's retry was a replay
            assert render["id"] in [r["id"] for r in page["items"]]
        assert proxy.count("POST", "/v1/uploads") == 3 and proxy.count("GET", "/v1/subjects/", "drop") == 2
        assert proxy.count("POST", "/v1/subjects/") == 2  # the render's POST: forwarded twice, one render
        assert waited >= 1.0  # Retry-After honoured
        keys = [
            s.headers["idempotency-key"] for s in proxy.seen if s.method == "POST" and "/renders" in s.path
        ]
        assert len(keys) == 2 and keys[0] == keys[1]
    finally:
        proxy.close()


def test_a_dub_through_a_faulty_network_submits_each_track_once(api, tmp_path):
    manifest = _manifest(tmp_path / "tracks", 5, 100, "missing.wav,gone\n")
    (tmp_path / "tracks" / "readme.wav").write_text("I am text")
    with open(manifest, "a") as fh:
        fh.write("readme.wav,text\n")
    rules = [
        Rule("POST", "/v1/batches", "drop_after", times=1),
        Rule("POST", "/v1/batches", "500", times=1),
        Rule("GET", "/v1/", "429", times=2, retry_after=0),
        Rule("POST", "/v1/uploads", "drop", times=2),
    ]
    proxy = FaultProxy(api["url"], rules)
    out = tmp_path / "out"
    try:

        async def run():
            async with AsyncClient(proxy.url, api["key"], retry=FAST) as c:
                return await dub(c, DubOptions(api["subject"], manifest, out, batch_size=2, wait=False))

        summary = asyncio.run(run())
    finally:
        proxy.close()
    assert summary.counts == {"submitted": 5, "bad": 2} and summary.created == 5
    assert dict(summary.bad) == {"gone": "missing.wav: file not found",
                                 "text": "readme.wav: not an audio file (no known audio or video container)"}  # fmt: skip
    with Client(api["url"], api["key"]) as c:
        refs = sorted(
            r["ref"] for r in c.iter_renders(subject_id=api["subject"]) if r["ref"].startswith("take-100")
        )
    assert refs == [f"take-100-{i}" for i in range(5)]  # each once, though the first batch POST went twice


def _dub_through(api, proxy: FaultProxy, manifest: Path, out: Path, **options):
    """A dub through the proxy: (its summary, the upload calls the proxy saw, in order)."""

    async def run():
        async with AsyncClient(proxy.url, api["key"], retry=FAST) as c:
            return await dub(c, DubOptions(api["subject"], manifest, out, wait=False, **options))

    try:
        summary = asyncio.run(run())
        return summary, [(s.method, s.path) for s in proxy.seen if s.path.startswith("/v1/uploads")]
    finally:
        proxy.close()


def test_short_tracks_are_sent_inline_and_an_item_refused_there_is_set_aside(api, tmp_path):
    manifest = _manifest(tmp_path / "tracks", 4, 500)
    rule = Rule("POST", "/v1/uploads/files", "problem:422:not_media:items[2]: line2.wav is not media.")
    summary, calls = _dub_through(api, FaultProxy(api["url"], [rule]), manifest, tmp_path / "out")
    assert calls == [("POST", "/v1/uploads/files")] * 2  # all four, then the three left: no PUTs at all
    assert summary.counts == {"submitted": 3, "bad": 1} and summary.created == 3
    assert dict(summary.bad) == {"take-500-2": "not_media: line2.wav is not media."}


def test_presigned_uploads_are_made_a_thousand_per_call_and_an_item_refused_there_is_set_aside(api, tmp_path):
    manifest = _manifest(tmp_path / "tracks", 4, 300)
    rule = Rule("POST", "/v1/uploads/batch", "problem:413:file_too_large:items[1]: line1.wav is too large.")
    proxy = FaultProxy(api["url"], [rule])
    summary, calls = _dub_through(api, proxy, manifest, tmp_path / "out", inline=False)
    assert calls == [("POST", "/v1/uploads/batch")] * 2  # all four, then the three left: never one by one
    assert summary.counts == {"submitted": 3, "bad": 1} and summary.created == 3
    assert dict(summary.bad) == {"take-300-1": "file_too_large: line1.wav is too large."}


def test_a_server_without_the_bulk_routes_gets_uploads_one_by_one(api, tmp_path):
    """An API from before POST /v1/uploads/files and /batch answers 405 there (the paths read as
    GET /v1/uploads/{id}): the client asks once for each, then makes presigned uploads one at a time."""
    manifest = _manifest(tmp_path / "tracks", 3, 400)
    rules = [
        Rule("POST", "/v1/uploads/files", "405", times=100),
        Rule("POST", "/v1/uploads/batch", "405", times=100),
    ]
    summary, calls = _dub_through(api, FaultProxy(api["url"], rules), manifest, tmp_path / "out")
    assert (
        calls
        == [("POST", "/v1/uploads/files"), ("POST", "/v1/uploads/batch")] + [("POST", "/v1/uploads")] * 3
    )
    assert summary.counts == {"submitted": 3} and summary.created == 3


def test_a_client_killed_mid_run_and_rerun_submits_nothing_twice(api, tmp_path):
    manifest = _manifest(tmp_path / "tracks", 6, 200)
    out = tmp_path / "out"
    # the first batch reaches the API (its renders are created) but its answer is held: then SIGKILL
    proxy = FaultProxy(api["url"], [Rule("POST", "/v1/batches", "hang_after", times=1)])
    env = {**os.environ, "SYNCTALK_API_URL": proxy.url, "SYNCTALK_API_KEY": api["key"]}
    with Client(api["url"], api["key"]) as c:
        before = count_renders(c, api["subject"])
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "remote", "dub", api["subject"], str(manifest), "--out",
             str(out), "--batch-size", "2", "--no-wait"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while proxy.count("POST", "/v1/batches") < 1 or count_renders(c, api["subject"]) < before + 2:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            proxy.close()
        assert count_renders(c, api["subject"]) == before + 2  # the lost answer's batch exists on the server
        st = State(out)
        assert st.counts() == {"assigned": 2, "new": 4} and len(st.unsent_batches()) == 1
        st.close()

        env["SYNCTALK_API_URL"] = api["url"]
        rerun = remote(
            env, "dub", api["subject"], str(manifest), "--out", str(out), "--batch-size", "2", "--no-wait"
        )
        assert rerun.returncode == 0, rerun.stderr
        assert count_renders(c, api["subject"]) == before + 6  # 6 tracks, 6 renders: the first batch replayed
        again = remote(env, "dub", api["subject"], str(manifest), "--out", str(out), "--no-wait")
        assert again.returncode == 0 and count_renders(c, api["subject"]) == before + 6
        assert "renders created by this run │      0" in again.stderr
        mine = [r for r in c.iter_renders(subject_id=api["subject"]) if r["ref"].startswith("take-200")]
        assert sorted(r["ref"] for r in mine) == [f"take-200-{i}" for i in range(6)]


def test_cli_status_list_and_errors(api, tmp_path):
    env = {**os.environ, "SYNCTALK_API_URL": api["url"], "SYNCTALK_API_KEY": api["key"]}
    listed = remote(env, "list", "--subjects")
    assert listed.returncode == 0 and api["subject"] in listed.stdout
    shown = remote(env, "status", api["subject"], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "Ann"
    missing = remote(env, "status", "nope")
    assert missing.returncode == 1 and "no subject, render or batch" in missing.stderr
    no_key = remote({k: v for k, v in env.items() if k != "SYNCTALK_API_KEY"}, "list")
    assert no_key.returncode == 1 and "SYNCTALK_API_KEY" in no_key.stderr


@pytest.fixture
def s3_object(tmp_path):
    s3 = MotoS3(tmp_path / "moto.log")
    try:
        c = boto3.client("s3", endpoint_url=s3.url, aws_access_key_id="testing",
                         aws_secret_access_key="testing-secret", region_name="us-east-1")  # fmt: skip
        c.create_bucket(Bucket="videos")
        data = os.urandom(3 * 1024 * 1024 + 17)
        c.put_object(Bucket="videos", Key="r/video.mp4", Body=data)
        yield s3.url, c, data
    finally:
        s3.stop()


def test_a_download_cut_mid_body_resumes_with_range(s3_object, tmp_path):
    url, s3, data = s3_object
    proxy = FaultProxy(url, [Rule("GET", "/videos/", "cut:1000000", times=1)])
    try:
        signed = s3.generate_presigned_url("get_object", Params={"Bucket": "videos", "Key": "r/video.mp4"})
        signed = signed.replace(url, proxy.url)
        with Client("http://unused", "k", retry=FAST) as c:
            dest = c.download_url(signed, tmp_path / "v.mp4")
        assert dest.read_bytes() == data and not (tmp_path / "v.mp4.part").exists()
        first, second = [s for s in proxy.seen if s.method == "GET"]
        assert "range" not in first.headers and first.action == "cut:1000000"
        start = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
        assert 0 < start <= 1_000_000  # asked only for the rest
    finally:
        proxy.close()


def test_a_part_file_left_by_an_earlier_run_is_completed_not_restarted(s3_object, tmp_path):
    url, s3, data = s3_object
    signed = s3.generate_presigned_url("get_object", Params={"Bucket": "videos", "Key": "r/video.mp4"})
    # the part holds 1 MiB of zeros: if the client resumed, they stay (a restart would overwrite them)
    (tmp_path / "v.mp4.part").write_bytes(bytes(1 << 20))
    with Client("http://unused", "k", retry=FAST) as c:
        got = c.download_url(signed, tmp_path / "v.mp4").read_bytes()
    assert got[: 1 << 20] == bytes(1 << 20) and got[1 << 20 :] == data[1 << 20 :]
    # a part as long as the file (a crash before the rename): S3 answers 416, the file comes anew
    (tmp_path / "w.mp4.part").write_bytes(data)
    with Client("http://unused", "k", retry=FAST) as c:
        assert c.download_url(signed, tmp_path / "w.mp4").read_bytes() == data


def test_the_async_client_downloads_with_resume_too(s3_object, tmp_path):
    url, s3, data = s3_object
    signed = s3.generate_presigned_url("get_object", Params={"Bucket": "videos", "Key": "r/video.mp4"})
    (tmp_path / "a.mp4.part").write_bytes(bytes(1000))

    async def run():
        async with AsyncClient("http://unused", "k", retry=FAST) as c:
            return await c.download_url(signed, tmp_path / "a.mp4")

    got = asyncio.run(run()).read_bytes()
    assert got[:1000] == bytes(1000) and got[1000:] == data[1000:]
    assert httpx is not None
