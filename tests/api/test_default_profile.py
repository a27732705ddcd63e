"""The training profile of a subject created without one (API.md "Subjects": ``SYNCTALK_DEFAULT_PROFILE``,
else what suits the workers' hardware): the setting when set; else ``standard`` when a worker serving
the gpu queue reported a CUDA GPU within the last week, else ``preview``. The API's own machine is never
asked (on the real stack it has no GPU): workers report themselves in the ``workers`` table, written
here as a worker would."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from api_helpers import Api, make_api

from gpu_worker.media.binaries import ffmpeg_exe
from shared.db.models import WorkerInfo, utcnow


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("profile-media") / "talk.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-nostdin",
         "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=2",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=2",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    return out.read_bytes()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    made = make_api(tmp_path, min_train_seconds=1)
    yield made
    made.close()


def worker(api: Api, name: str, queues: str, accelerator: str | None, seen_days_ago: float = 0) -> None:
    seen = utcnow() - timedelta(days=seen_days_ago)
    with api.platform.sessions() as s:
        s.add(WorkerInfo(name=name, queues=queues, accelerator=accelerator, started_at=seen, seen_at=seen))
        s.commit()


def created_profile(api: Api, video: bytes, **fields) -> str:
    r = api.client().post("/v1/subjects", files={"video": ("talk.mp4", video, "video/mp4")}, data=fields)
    assert r.status_code == 202, r.text
    return api.client().get(f"/v1/subjects/{r.json()['id']}").json()["profile"]


def test_the_default_profile_follows_the_gpu_workers_that_reported_in(api, video):
    assert created_profile(api, video) == "preview"  # no worker has reported yet
    worker(api, "cpu@a", "cpu", "cuda: NVIDIA H100")  # a GPU, but not serving the gpu queue
    worker(api, "gpu@b", "gpu", None)  # the gpu queue on a CPU
    worker(api, "gpu@c", "gpu", "cpu: 16 cores")
    worker(api, "gpu@d", "cpu,gpu", "cuda: NVIDIA A10G", seen_days_ago=8)  # gone for more than a week
    assert created_profile(api, video) == "preview"
    worker(api, "gpu@e", "cpu,gpu", "cuda: NVIDIA H100 80GB HBM3", seen_days_ago=6)
    assert created_profile(api, video) == "standard"
    assert created_profile(api, video, profile="tiny") == "tiny"  # the client's own choice wins


def test_the_setting_wins_over_the_workers(tmp_path, video):
    api = make_api(tmp_path, min_train_seconds=1, default_profile="tiny")
    try:
        worker(api, "gpu@e", "gpu", "cuda: NVIDIA H100")
        assert created_profile(api, video) == "tiny"
    finally:
        api.close()


def test_the_api_never_asks_its_own_machine(api, video, monkeypatch):
    """Whatever torch would say on the API's machine is beside the point: using it fails the request."""

    class Tripwire(types.ModuleType):
        def __getattr__(self, name: str):
            raise AssertionError(f"the API consulted torch.{name} to pick a profile")

    monkeypatch.setitem(sys.modules, "torch", Tripwire("torch"))
    assert created_profile(api, video) == "preview"
    worker(api, "gpu@e", "gpu", "cuda: NVIDIA H100")
    assert created_profile(api, video) == "standard"
