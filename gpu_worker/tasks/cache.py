"""A worker's local cache (sources, datasets, models of subjects; a render's scratch folder), bounded.

Storage is the truth; the cache only spares downloads. Each entry is one folder,
``<cache>/<kind>/<id>`` (kind: ``subjects`` or ``renders``). While a stage uses an entry it holds a
shared ``flock`` on the entry's lock file (so do loaded renderers); eviction takes an exclusive one
without waiting and skips entries it cannot take, so an entry in use, in this process or another
worker's on the same disk, is never removed.

``housekeep`` (run by a worker between stages, at most once a minute) removes:
- entries of subjects and renders that no longer exist in the database (a deleted subject's files);
- the least recently used entries while the cache is larger than ``worker_cache_max_bytes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
KINDS = ("subjects", "renders")
LOCK_NAME = ".in-use"  # beside the entry folder: <cache>/<kind>/<id>.in-use
HOUSEKEEP_EVERY_S = 60.0


@dataclass
class WorkerCache:
    root: Path
    max_bytes: int  # 0: no limit
    _held: dict[Path, tuple[int, int]] = field(default_factory=dict)  # entry -> (fd, holders)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_housekeeping: float = 0.0

    def entry(self, kind: str, entry_id: str) -> Path:
        if kind not in KINDS or not entry_id or "/" in entry_id or entry_id.startswith("."):
            raise ValueError(f"not a cache entry: {kind}/{entry_id}")
        return self.root / kind / entry_id

    def folder(self, kind: str, entry_id: str, *parts: str) -> Path:
        """A folder inside an entry, made if missing; the entry is marked as just used."""
        path = self.entry(kind, entry_id).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        self.touch(kind, entry_id)
        return path

    def touch(self, kind: str, entry_id: str) -> None:
        entry = self.entry(kind, entry_id)
        with contextlib.suppress(FileNotFoundError):
            os.utime(entry)

    # --- in use: a shared lock per entry, counted within this process ---
    def hold(self, kind: str, entry_id: str) -> None:
        lock = _lock_path(self.entry(kind, entry_id))
        with self._lock:
            fd, n = self._held.get(lock, (-1, 0))
            if n == 0:
                lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(fd, fcntl.LOCK_SH)
            self._held[lock] = (fd, n + 1)

    def release(self, kind: str, entry_id: str) -> None:
        lock = _lock_path(self.entry(kind, entry_id))
        with self._lock:
            fd, n = self._held.get(lock, (-1, 0))
            if n <= 1:
                self._held.pop(lock, None)
                if not lock.with_name(lock.name.removesuffix(LOCK_NAME)).exists():
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()  # a render's scratch entry, removed by its stage: no lock left over
                if fd >= 0:
                    os.close(fd)  # closing drops the flock
            else:
                self._held[lock] = (fd, n - 1)

    @contextlib.contextmanager
    def using(self, *entries: tuple[str, str]) -> Iterator[None]:
        for kind, entry_id in entries:
            self.hold(kind, entry_id)
        try:
            yield
        finally:
            for kind, entry_id in entries:
                self.release(kind, entry_id)

    # --- removal ---
    def remove(self, kind: str, entry_id: str) -> bool:
        """Delete an entry unless something holds it; True when it is gone."""
        entry = self.entry(kind, entry_id)
        lock = _lock_path(entry)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return not entry.exists()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use by a stage (here or in another worker on this disk)
            shutil.rmtree(entry, ignore_errors=True)
            return True  # the lock file stays: unlinking it could let two processes hold different files
        finally:
            os.close(fd)

    def entries(self) -> list[tuple[str, str, Path]]:
        found = []
        for kind in KINDS:
            folder = self.root / kind
            if folder.is_dir():
                found += [(kind, p.name, p) for p in folder.iterdir() if p.is_dir()]
        return found

    def size(self) -> int:
        return sum(_du(p) for _, _, p in self.entries())

    def evict(self, keep_under: int | None = None) -> list[tuple[str, str]]:
        """Least recently used entries removed until the cache holds at most ``keep_under`` bytes (the
        setting by default); entries in use are skipped."""
        limit = self.max_bytes if keep_under is None else keep_under
        if not limit:
            return []
        sized = [(p.stat().st_mtime, kind, entry_id, _du(p)) for kind, entry_id, p in self.entries()]
        total = sum(size for *_, size in sized)
        removed = []
        for _mtime, kind, entry_id, size in sorted(sized):
            if total <= limit:
                break
            if self.remove(kind, entry_id):
                total -= size
                removed.append((kind, entry_id))
        if total > limit:
            log.warning("worker cache: %.1f GB in use exceeds its %.1f GB limit", total / 1e9, limit / 1e9)
        return removed

    def drop_gone(self, exists: dict[str, set[str]]) -> list[tuple[str, str]]:
        """Remove entries whose subject or render no longer exists (``exists``: kind -> ids that do)."""
        removed = []
        for kind, entry_id, _path in self.entries():
            if entry_id not in exists.get(kind, set()) and self.remove(kind, entry_id):
                removed.append((kind, entry_id))
        return removed

    def housekeep(self, engine, *, force: bool = False) -> list[tuple[str, str]]:
        """Drop deleted subjects' and renders' files, then evict beyond the size limit (at most once a
        minute unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_housekeeping < HOUSEKEEP_EVERY_S:
            return []
        self._last_housekeeping = now
        removed = self.drop_gone(_existing(engine, self.entries()))
        removed += self.evict()
        if removed:
            log.info("worker cache: removed %s", ", ".join(f"{k}/{i}" for k, i in removed))
        return removed


def _lock_path(entry: Path) -> Path:
    return entry.with_name(entry.name + LOCK_NAME)


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _existing(engine, entries: list[tuple[str, str, Path]]) -> dict[str, set[str]]:
    """Which of the cached ids are still needed: subjects that exist, renders not finished."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from shared.db.models import Render, Subject

    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    wanted: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for kind, entry_id, _ in entries:
        wanted[kind].append(entry_id)
    with Session(engine) as s:
        for kind, model in (("subjects", Subject), ("renders", Render)):
            ids = wanted[kind]
            for i in range(0, len(ids), 500):
                stmt = select(model.id).where(model.id.in_(ids[i : i + 500]))
                if model is Render:  # a finished render's scratch folder is a leftover of a lost worker
                    stmt = stmt.where(Render.status.in_(("queued", "running")))
                found[kind] |= set(s.scalars(stmt))
    return found
