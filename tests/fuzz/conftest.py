"""The API served for fuzzing: the real app (``create_app``) under uvicorn on a free loopback port, on a
throw-away migrated PostgreSQL database, a local storage folder and the embedded broker; two tenants
with keys, each with resources made through the API itself (subjects from a small real video, renders,
a batch, uploads, a webhook), some moved through their life as workers would move them.

``fuzz_api`` yields a ``FuzzApi``: the base URL, both keys, tenant A's ids by kind (what the fuzzer may
name) and every string of tenant B's that tenant A must never see.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))  # api_helpers (not a package)

from api_helpers import add_tenant, api_settings, free_port, postgres_url, run_job  # noqa: E402

from services.api.app import create_app  # noqa: E402
from shared.db.states import JobKind  # noqa: E402

UNLIMITED = 10**9  # rate limits that never answer 429 during the run


@dataclass
class FuzzApi:
    base_url: str
    key_a: str
    key_b: str
    tenant_a: str
    tenant_b: str
    ids_a: dict[str, list[str]] = field(default_factory=dict)  # kind -> ids tenant A may use
    deletable_a: dict[str, list[str]] = field(default_factory=dict)  # kind -> A's ids DELETE may take
    ids_b: dict[str, list[str]] = field(default_factory=dict)  # kind -> tenant B's resource ids
    secrets_b: list[str] = field(default_factory=list)  # B's key, webhook secret, tenant id

    @property
    def foreign(self) -> set[str]:
        """Every string of tenant B's that no answer to tenant A may contain."""
        return {i for ids in self.ids_b.values() for i in ids} | set(self.secrets_b)


def _clip(folder: Path) -> tuple[Path, Path]:
    """A 5 s H.264 + AAC test clip and a 2 s 16 kHz WAV (real media files, made by ffmpeg in ~1 s)."""
    from gpu_worker.media.audio import write_wav
    from gpu_worker.media.binaries import ffmpeg_exe

    video = folder / "person.mp4"
    lavfi = [
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=96x72:rate=25:duration=5",
        "-f",
        "lavfi",
        "-i",
        "sine=duration=5",
    ]
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", *lavfi, "-c:v", "libx264", "-c:a", "aac", "-shortest", str(video)],
        check=True,
    )
    speech = write_wav(folder / "line.wav", 0.3 * np.sin(np.arange(32000) / 10.0), 16000)
    return video, Path(speech)


def _ok(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json() if r.content else {}


def _populate(c: httpx.Client, platform, tenant_id: str, video: Path, speech: Path, tag: str) -> dict:
    """A tenant's resources, made through the API: (kind -> ids, extra secrets, deletable ids)."""
    with open(video, "rb") as fh:
        subject = _ok(c.post("/v1/subjects", files={"video": ("person.mp4", fh, "video/mp4")}), 202)
    with open(video, "rb") as fh:
        other = _ok(
            c.post("/v1/subjects", files={"video": ("p2.mp4", fh, "video/mp4")}, data={"name": tag}), 202
        )
    with open(speech, "rb") as fh:
        render = _ok(
            c.post(f"/v1/subjects/{subject['id']}/renders", files={"audio": ("l.wav", fh, "audio/wav")}), 202
        )
    with open(speech, "rb") as fh:
        inline = _ok(c.post("/v1/uploads/files", files=[("file", ("a.wav", fh, "audio/wav"))]), 201)["data"][
            0
        ]
    batch = _ok(
        c.post(
            "/v1/batches",
            json={"subject_id": subject["id"], "items": [{"upload_id": inline["id"], "ref": f"{tag}-1"}] * 2},
        ),
        202,
    )
    presigned = _ok(
        c.post("/v1/uploads", json={"filename": "x.wav", "content_type": "audio/wav", "bytes": 64000}), 201
    )
    hook = _ok(c.post("/v1/webhooks", json={"url": f"https://hooks.example.com/{tag}", "events": ["*"]}), 201)
    # one render canceled (retry takes it), the subject's renders of the second subject run to success
    canceled = batch["renders"][0]["id"]
    _ok(c.post(f"/v1/renders/{canceled}/cancel"), 202)
    run_job(platform, JobKind.subject, other["id"])
    with open(speech, "rb") as fh:
        done = _ok(
            c.post(f"/v1/subjects/{other['id']}/renders", files={"audio": ("d.wav", fh, "audio/wav")}), 202
        )
    run_job(platform, JobKind.render, done["id"])
    # a subject only DELETE may take (so the others stay for every later operation)
    with open(video, "rb") as fh:
        doomed = _ok(c.post("/v1/subjects", files={"video": ("p3.mp4", fh, "video/mp4")}), 202)
    doomed_hook = _ok(
        c.post("/v1/webhooks", json={"url": f"https://hooks.example.com/{tag}/2", "events": ["*.failed"]}),
        201,
    )
    ids = {
        "subject": [subject["id"], other["id"]],
        "render": [render["id"], done["id"], *(r["id"] for r in batch["renders"])],
        "batch": [batch["id"]],
        "upload": [inline["id"], presigned["id"]],
        "webhook": [hook["id"]],
    }
    deletable = {"subject": [doomed["id"]], "webhook": [doomed_hook["id"]]}
    return ids, [hook["secret"], doomed_hook["secret"]], deletable


def _serve(app, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory) -> Iterator[FuzzApi]:
    root = tmp_path_factory.mktemp("fuzz")
    video, speech = _clip(root)
    port = free_port()
    with postgres_url() as db_url:
        settings = api_settings(
            root, db_url, public_url=f"http://127.0.0.1:{port}", rate_limit_per_minute=UNLIMITED,
            rate_limit_ip_per_minute=UNLIMITED, min_train_seconds=1, default_profile="tiny",
        )  # fmt: skip
        app = create_app(settings)
        platform = app.state.platform
        tenant_a, key_a = add_tenant(platform, "tenant-a")
        tenant_b, key_b = add_tenant(platform, "tenant-b")
        server, thread = _serve(app, port)
        base = f"http://127.0.0.1:{port}"
        try:
            made = FuzzApi(base, key_a, key_b, tenant_a, tenant_b)
            for key, tenant, tag in ((key_b, tenant_b, "b"), (key_a, tenant_a, "a")):
                with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
                    ids, secrets, deletable = _populate(c, platform, tenant, video, speech, tag)
                if tag == "a":
                    made.ids_a, made.deletable_a = ids, deletable
                else:
                    made.ids_b = {k: v + deletable.get(k, []) for k, v in ids.items()}
                    made.secrets_b = [key_b, tenant_b, *secrets]
            yield made
        finally:
            server.should_exit = True
            thread.join(10)
            platform.engine.dispose()
