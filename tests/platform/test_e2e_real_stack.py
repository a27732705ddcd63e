"""End to end on the real stack, by settings alone: PostgreSQL, Redis and S3 (moto's server on
loopback, a real HTTP endpoint boto3 talks to). Presigned uploads straight to S3, a subject through
real workers, a batch of one render, the video downloaded from S3 through its presigned URL."""

from __future__ import annotations

import os

import httpx
import pytest
import redis
from platform_helpers import (
    MotoS3,
    Served,
    free_port,
    platform_env,
    postgres_database,
    presigned_upload,
    synctalk,
    wait_for,
)

from gpu_worker.media.probe import probe
from shared.settings import Settings


def _services() -> tuple[str, str]:
    pg, rd = os.environ.get("SYNCTALK_TEST_POSTGRES_URL"), os.environ.get("SYNCTALK_TEST_REDIS_URL")
    if not (pg and rd):
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI must provide SYNCTALK_TEST_POSTGRES_URL and SYNCTALK_TEST_REDIS_URL (.ci/run sets them)"
            )
        pytest.skip("SYNCTALK_TEST_POSTGRES_URL / SYNCTALK_TEST_REDIS_URL not set")
    return pg, rd


@pytest.mark.slow
def test_the_same_flow_on_postgres_redis_and_s3(sample_subject, sample_subject_b, tmp_path):
    pg_server, redis_url = _services()
    db_url, drop_db = postgres_database(pg_server)
    redis.Redis.from_url(redis_url).delete("cpu", "gpu")  # no task left over from another run
    s3 = MotoS3(tmp_path / "moto.log")
    port = free_port()
    env = platform_env(
        tmp_path / "data", port, database_url=db_url, broker_url=redis_url, storage_url="s3://synctalk-e2e",
        s3_endpoint_url=s3.url,
    )  # fmt: skip
    env.update(MotoS3.ENV, NO_PROXY="127.0.0.1,localhost")
    served = None
    try:
        synctalk(env, "migrate")
        key = synctalk(env, "keys", "create", "--tenant", "studio").strip().splitlines()[-1]
        served = Served(env, port, tmp_path / "serve.log")
        client = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert client.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}

        video_upload = presigned_upload(client, sample_subject.video, "video/mp4")
        r = client.post(
            "/v1/subjects", json={"upload_id": video_upload, "name": "Ann"}, headers={"Idempotency-Key": "s1"}
        )
        assert r.status_code == 202, r.text
        subject = r.json()
        again = client.post(
            "/v1/subjects", json={"upload_id": video_upload, "name": "Ann"}, headers={"Idempotency-Key": "s1"}
        )
        assert again.json()["id"] == subject["id"]  # a retried POST creates nothing new

        speech_upload = presigned_upload(client, sample_subject_b.speech, "audio/wav")
        r = client.post(
            "/v1/batches",
            json={"subject_id": subject["id"], "items": [{"upload_id": speech_upload, "ref": "line-1"}]},
        )
        assert r.status_code == 202, r.text
        batch = r.json()
        render_id = batch["renders"][0]["id"]

        done = wait_for(client, f"/v1/subjects/{subject['id']}", timeout=900)
        assert done["status"] == "succeeded", served.output()
        finished = wait_for(client, f"/v1/renders/{render_id}", timeout=600)
        assert finished["status"] == "succeeded" and finished["ref"] == "line-1", served.output()
        counts = client.get(f"/v1/batches/{batch['id']}").json()
        assert counts["total"] == 1 and counts["counts"]["succeeded"] == 1 and counts["done"]

        link = client.get(f"/v1/renders/{render_id}/video")
        assert link.status_code in (302, 307) and link.headers["location"].startswith(s3.url)
        video = httpx.get(link.headers["location"], timeout=60)
        assert video.status_code == 200
        out = tmp_path / "dub.mp4"
        out.write_bytes(video.content)
        assert probe(out, Settings(), require_video=True, require_audio=True).video.frame_count > 0
    except BaseException:
        if served is not None:
            print(served.output())
        raise
    finally:
        if served is not None:
            served.stop()
        s3.stop()
        drop_db()
