"""A worker's cache stays bounded: the least recently used entries go beyond its size, never one a stage
(in this process or another worker's) holds; files of deleted subjects and finished renders go too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from gpu_worker.tasks.cache import WorkerCache
from shared.db.models import Tenant
from shared.db.session import session_scope
from shared.jobs import lifecycle


def _fill(cache: WorkerCache, kind: str, entry_id: str, size: int, age_s: float) -> None:
    folder = cache.folder(kind, entry_id, "dataset")
    (folder / "blob").write_bytes(b"\0" * size)
    then = time.time() - age_s
    os.utime(cache.entry(kind, entry_id), (then, then))


def test_the_least_recently_used_entries_go_beyond_the_size_but_held_ones_stay(tmp_path):
    cache = WorkerCache(tmp_path, max_bytes=2500)
    _fill(cache, "subjects", "old", 1000, age_s=300)
    _fill(cache, "subjects", "held", 1000, age_s=200)
    _fill(cache, "subjects", "recent", 1000, age_s=100)
    _fill(cache, "subjects", "new", 1000, age_s=0)
    # another process (a second worker on this disk) is using "held"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from gpu_worker.tasks.cache import WorkerCache; from pathlib import Path;"
         "c = WorkerCache(Path(sys.argv[2]), 0); c.hold('subjects', 'held'); print('held', flush=True);"
         "time.sleep(60)", os.getcwd(), str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        removed = cache.evict()
    finally:
        holder.kill()
        holder.wait()
    assert removed == [("subjects", "old"), ("subjects", "recent")]  # "held" skipped, "new" not needed
    assert {e for _, e, _ in cache.entries()} == {"held", "new"}
    assert cache.size() == 2000


def test_an_entry_held_in_this_process_is_not_removed_until_released(tmp_path):
    cache = WorkerCache(tmp_path, max_bytes=10)
    _fill(cache, "renders", "r1", 100, age_s=50)
    with cache.using(("renders", "r1")):
        assert cache.evict() == [] and cache.entry("renders", "r1").exists()
    assert cache.evict() == [("renders", "r1")]


def test_files_of_deleted_subjects_and_finished_renders_are_dropped(tmp_path, engine):
    with session_scope(engine) as s:
        tenant = Tenant(name=f"t-{uuid.uuid4().hex[:6]}")
        s.add(tenant)
        s.flush()
        kept, _ = lifecycle.create_subject(s, tenant.id, name="kept", profile="tiny")
        deleted, _ = lifecycle.create_subject(s, tenant.id, name="gone", profile="tiny")
        queued_render, _ = lifecycle.create_render(s, tenant.id, kept, audio_key="k")
        done_render, _ = lifecycle.create_render(s, tenant.id, kept, audio_key="k")
    with session_scope(engine) as s:
        lifecycle.request_cancel(s, "render", done_render.id)  # finished (canceled)
        s.delete(lifecycle.job_row(s, "subject", deleted.id))
    cache = WorkerCache(tmp_path, max_bytes=0)
    for kind, entry_id in [("subjects", kept.id), ("subjects", deleted.id), ("renders", queued_render.id),
                           ("renders", done_render.id)]:  # fmt: skip
        _fill(cache, kind, entry_id, 10, age_s=0)
    removed = cache.housekeep(engine, force=True)
    assert sorted(removed) == sorted([("subjects", deleted.id), ("renders", done_render.id)])
    assert {e for _, e, _ in cache.entries()} == {kept.id, queued_render.id}
