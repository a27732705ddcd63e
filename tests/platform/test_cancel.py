"""Cancel stops a running stage: a subject canceled while it trains stops within a couple of progress
reports, its stage is marked canceled, nothing runs on; deleting it removes its files from storage."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from platform_helpers import Served, free_port, platform_env, synctalk

STEP = re.compile(r"step (\d+)/(\d+)")


@pytest.mark.slow
def test_cancel_stops_training_and_delete_removes_the_files(sample_subject, tmp_path):
    port = free_port()
    env = platform_env(tmp_path / "data", port, train_steps_scale="8")
    synctalk(env, "migrate")
    key = synctalk(env, "keys", "create", "--tenant", "studio").strip().splitlines()[-1]
    served = Served(env, port, tmp_path / "serve.log")
    try:
        client = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        with open(sample_subject.video, "rb") as fh:
            subject = client.post("/v1/subjects", files={"video": ("ann.mp4", fh, "video/mp4")}).json()
        path = f"/v1/subjects/{subject['id']}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            doc = client.get(path).json()
            m = STEP.search(doc.get("message") or "")
            if doc["stage"] == "train" and m and int(m.group(1)) > 50:
                break
            assert doc["status"] in ("queued", "running"), doc
            time.sleep(0.3)
        r = client.post(f"{path}/cancel")
        assert r.status_code == 202
        asked = time.monotonic()
        while (doc := client.get(path).json())["status"] == "running" and time.monotonic() - asked < 30:
            time.sleep(0.2)
        assert doc["status"] == "canceled", doc
        stopped_after = time.monotonic() - asked
        train = next(s for s in doc["stages"] if s["name"] == "train")
        assert train["status"] == "canceled" and doc["stages"][0]["status"] == "succeeded"
        time.sleep(3)  # nothing runs on: no more progress after the cancel
        assert client.get(path).json()["updated_at"] == doc["updated_at"]
        print(f"canceled {stopped_after:.1f} s after the request")

        stored = tmp_path / "data" / "storage" / "tenants"
        assert any(stored.rglob(f"subjects/{subject['id']}/*"))
        assert client.delete(path).status_code == 204
        assert client.get(path).status_code == 404
        assert not any(stored.rglob(f"subjects/{subject['id']}/*"))
    except BaseException:
        print(served.output())
        raise
    finally:
        served.stop()
