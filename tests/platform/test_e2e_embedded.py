"""End to end on the embedded default: ``synctalk serve`` (SQLite, a storage folder, a broker file, real
worker processes), a key from ``synctalk keys create``, a real face's video uploaded over HTTP through
its stages to a trained subject, a speech track rendered, the MP4 downloaded and probed."""

from __future__ import annotations

import httpx
import pytest
from platform_helpers import Served, free_port, platform_env, synctalk, wait_for

from gpu_worker.media.probe import probe
from shared.settings import Settings


@pytest.mark.slow
def test_a_subject_and_a_render_through_real_workers(sample_subject, sample_subject_b, tmp_path):
    port = free_port()
    env = platform_env(tmp_path / "data", port)
    synctalk(env, "migrate")
    key = synctalk(env, "keys", "create", "--tenant", "studio").strip().splitlines()[-1]
    other = synctalk(env, "keys", "create", "--tenant", "someone-else").strip().splitlines()[-1]
    served = Served(env, port, tmp_path / "serve.log")
    try:
        client = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        with open(sample_subject.video, "rb") as fh:
            r = client.post(
                "/v1/subjects", files={"video": ("ann.mp4", fh, "video/mp4")}, data={"name": "Ann"}
            )
        assert r.status_code == 202, r.text
        subject = r.json()
        assert r.headers["location"] == f"/v1/subjects/{subject['id']}"
        assert subject["status"] == "queued" and [s["name"] for s in subject["stages"]] == [
            "ingest",
            "preprocess",
            "train",
        ]
        # a render submitted while the subject trains waits for it
        with open(sample_subject_b.speech, "rb") as fh:
            r = client.post(
                f"/v1/subjects/{subject['id']}/renders", files={"audio": ("line.wav", fh, "audio/wav")}
            )
        assert r.status_code == 202, r.text
        render = r.json()
        assert render["status"] == "queued"

        done = wait_for(client, f"/v1/subjects/{subject['id']}", timeout=900)
        assert done["status"] == "succeeded", served.output()
        assert done["report"]["usable_frames"] > 0 and done["metrics"]["self_driven"]["frames"] > 0
        assert all(s["status"] == "succeeded" and s["finished_at"] for s in done["stages"])

        finished = wait_for(client, f"/v1/renders/{render['id']}", timeout=600)
        assert finished["status"] == "succeeded", served.output()
        assert finished["qc"]["frames"] > 0 and finished["video_url"].endswith(
            f"/v1/renders/{render['id']}/video"
        )
        video = client.get(f"/v1/renders/{render['id']}/video", follow_redirects=True)
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        out = tmp_path / "dub.mp4"
        out.write_bytes(video.content)
        info = probe(out, Settings(), require_video=True, require_audio=True)
        assert abs(info.duration_s - finished["duration_s"]) < 0.1
        # its captions (on by default), in the language Whisper detected
        assert finished["captions"] == "on" and finished["language"] == "en"
        assert finished["captions_url"].endswith(f"/v1/renders/{render['id']}/captions")
        vtt = client.get(f"/v1/renders/{render['id']}/captions")
        assert vtt.status_code == 200 and vtt.headers["content-type"].startswith("text/vtt")
        assert vtt.text.startswith("WEBVTT") and " --> " in vtt.text
        srt = client.get(f"/v1/renders/{render['id']}/captions", params={"format": "srt"})
        assert srt.status_code == 200 and srt.text.startswith("1\n")

        # another tenant's key sees none of it
        stranger = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {other}"}, timeout=30)
        assert stranger.get(f"/v1/subjects/{subject['id']}").status_code == 404
        assert stranger.get(f"/v1/renders/{render['id']}/video").status_code == 404
        assert stranger.get(f"/v1/renders/{render['id']}/captions").status_code == 404
        assert stranger.get("/v1/renders").json()["items"] == []
    except BaseException:
        print(served.output())
        raise
    finally:
        served.stop()
