"""End to end on the embedded default with real workers: ``synctalk serve``, a tiny subject made with
``remote subjects create --wait``, then ``remote dub`` of a manifest: every video downloaded, named by
its ref, a bad row reported while the rest go on; ``remote download`` over a partial file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from client_helpers import remote, speech_wav
from platform_helpers import Served, free_port, platform_env, synctalk

from gpu_worker.media.probe import probe
from services.client import Client
from shared.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(sample_subject, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    port = free_port()
    env = platform_env(tmp / "data", port)
    synctalk(env, "migrate")
    key = synctalk(env, "keys", "create", "--tenant", "studio").strip().splitlines()[-1]
    served = Served(env, port, tmp / "serve.log")
    client_env = {**os.environ, "SYNCTALK_API_URL": served.url, "SYNCTALK_API_KEY": key}
    try:
        made = remote(client_env, "subjects", "create", str(sample_subject.video), "--name", "Ann", "--wait",
                      timeout=900)  # fmt: skip
        assert made.returncode == 0, made.stderr[-3000:] + served.output()
        assert "train" in made.stderr  # the stages' progress bars
        yield {"env": client_env, "subject": made.stdout.strip().splitlines()[-1], "url": served.url, "key": key,
               "served": served}  # fmt: skip
    finally:
        served.stop()


def test_a_manifest_is_dubbed_end_to_end(platform, tmp_path):
    tracks = tmp_path / "tracks"
    tracks.mkdir()
    for i in range(3):
        speech_wav(tracks / f"line{i}.wav", 1.2, i)
    (tracks / "script.wav").write_text("INT. STUDIO - DAY")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            [
                '{"audio": "tracks/line0.wav", "ref": "intro"}',
                '{"audio": "tracks/line1.wav", "ref": "middle", "mode": "crop"}',
                '{"audio": "tracks/missing.wav", "ref": "lost"}',
                '{"audio": "tracks/script.wav", "ref": "script"}',
                '{"audio": "tracks/line2.wav", "ref": "outro"}',
            ]
        )
        + "\n"
    )
    out = tmp_path / "out"
    run = remote(platform["env"], "dub", platform["subject"], str(manifest), "--out", str(out), "--poll", "1",
                 timeout=600)  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:] + platform["served"].output()  # 1: some rows were bad
    assert sorted(p.name for p in out.glob("*.mp4")) == ["intro.mp4", "middle.mp4", "outro.mp4"]
    assert not list(out.glob("*.part"))
    for name in ("intro", "middle", "outro"):
        info = probe(out / f"{name}.mp4", Settings(), require_video=True, require_audio=True)
        assert 0.9 < info.duration_s < 1.6
    summary = run.stderr
    assert (
        "videos downloaded           │      3" in summary
        and "bad rows                    │      2" in summary
    )
    assert "lost" in summary and "missing.wav: file not found" in summary and "script" in summary

    # run again: everything is known, nothing is submitted or downloaded again
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    again = remote(platform["env"], "dub", platform["subject"], str(manifest), "--out", str(out), timeout=120)
    assert "renders created by this run │      0" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == stamps
    with Client(platform["url"], platform["key"]) as c:
        refs = [r["ref"] for r in c.iter_renders(subject_id=platform["subject"])]
    assert sorted(refs) == ["intro", "middle", "outro"]


def test_remote_render_and_download_over_a_partial_file(platform, tmp_path):
    line = speech_wav(tmp_path / "hello.wav", 1.0, 42)
    run = remote(
        platform["env"], "render", platform["subject"], str(line), "--out", str(tmp_path / "v"), timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    render_id = run.stdout.strip().splitlines()[-1]
    first = (tmp_path / "v" / "hello.mp4").read_bytes()
    # a part left by an interrupted download: the client asks for the rest (Range) and appends it
    dest = tmp_path / "again.mp4"
    half = len(first) // 2
    Path(str(dest) + ".part").write_bytes(first[:half])
    got = remote(platform["env"], "download", render_id, "--out", str(dest))
    assert got.returncode == 0, got.stderr
    assert dest.read_bytes() == first and not Path(str(dest) + ".part").exists()
    # and the first half really was kept, not fetched again: a part of zeros stays zeros
    marked = tmp_path / "marked.mp4"
    Path(str(marked) + ".part").write_bytes(bytes(half))
    got = remote(platform["env"], "download", render_id, "--out", str(marked))
    assert got.returncode == 0, got.stderr
    assert marked.read_bytes() == bytes(half) + first[half:]
