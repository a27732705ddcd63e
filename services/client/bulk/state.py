"""The dub's local state: ``OUT/.synctalk-dub.sqlite``, what a rerun resumes from.

SQLite in WAL mode with ``synchronous=FULL``: a committed step survives a crash or a power cut. Every
request that creates something is recorded *before* it is sent (its batch, with a key derived from its
items), so a run killed between sending and hearing back sends the same request again on the next run and
the API answers with the renders it already made. Nothing is held in memory per item beyond a query's
page.

Item states: ``new`` (checked, hashed) -> ``assigned`` (in a batch recorded, maybe sent) -> ``submitted``
(render id known) -> ``succeeded`` -> ``downloaded``; or ``failed`` (the render failed or was refused) or
``bad`` (the row itself: missing file, not audio...). Only ``--retry-failed`` takes failed and bad rows
up again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FILENAME = ".synctalk-dub.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    hash TEXT PRIMARY KEY, size INTEGER NOT NULL, path TEXT NOT NULL, ctype TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0, upload_id TEXT);
CREATE TABLE IF NOT EXISTS items (
    ref TEXT PRIMARY KEY, line INTEGER NOT NULL, audio TEXT NOT NULL, mode TEXT NOT NULL, hash TEXT,
    status TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, batch TEXT, render_id TEXT, error TEXT,
    started REAL, finished REAL);
CREATE INDEX IF NOT EXISTS items_by_status ON items (status, line);
CREATE INDEX IF NOT EXISTS items_by_render ON items (render_id);
CREATE INDEX IF NOT EXISTS items_by_batch ON items (batch, line);
CREATE TABLE IF NOT EXISTS batches (
    key TEXT PRIMARY KEY, seq INTEGER NOT NULL, batch_id TEXT, done INTEGER NOT NULL DEFAULT 0);
"""
FINAL = ("downloaded", "failed", "bad")


@dataclass(frozen=True)
class Item:
    ref: str
    line: int
    audio: str
    mode: str
    hash: str | None
    status: str
    attempt: int
    batch: str | None
    render_id: str | None
    error: str | None


class State:
    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / FILENAME
        self.db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- transactions: one commit per step (durable before the next request is sent)
    def __enter__(self) -> State:
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # --- items
    def line_of(self, ref: str) -> int | None:
        row = self.db.execute("SELECT line FROM items WHERE ref = ?", (ref,)).fetchone()
        return row[0] if row else None

    def add_item(
        self, ref: str, line: int, audio: str, mode: str, content_hash: str | None, error: str | None
    ) -> None:
        self.db.execute(
            "INSERT INTO items (ref, line, audio, mode, hash, status, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ref, line, audio, mode, content_hash, "bad" if error else "new", error),
        )

    def add_file(self, content_hash: str, size: int, path: str, ctype: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO files (hash, size, path, ctype) VALUES (?, ?, ?, ?)",
                        (content_hash, size, path, ctype))  # fmt: skip

    def items(self, where: str = "1", args: tuple = (), limit: int | None = None) -> list[Item]:
        sql = f"SELECT ref, line, audio, mode, hash, status, attempt, batch, render_id, error FROM items WHERE {where} ORDER BY line"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [Item(*r) for r in self.db.execute(sql, args)]

    def iter_items(self, where: str = "1", args: tuple = ()) -> Iterator[Item]:
        sql = f"SELECT ref, line, audio, mode, hash, status, attempt, batch, render_id, error FROM items WHERE {where} ORDER BY line"
        for r in self.db.execute(sql, args):
            yield Item(*r)

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())

    def set_status(
        self, ref: str, status: str, error: str | None = None, *, when: float | None = None
    ) -> None:
        self.db.execute("UPDATE items SET status = ?, error = ?, finished = COALESCE(?, finished) WHERE ref = ?",
                        (status, error, when, ref))  # fmt: skip

    def retry_failed(self) -> int:
        """Failed items go back to ``new`` with the next attempt number (so their batch is a new request);
        bad rows are forgotten, to be read and checked again from the manifest."""
        n = self.db.execute(
            "UPDATE items SET status = 'new', attempt = attempt + 1, batch = NULL, render_id = NULL, error = NULL,"
            " finished = NULL WHERE status = 'failed'"
        ).rowcount
        return n + self.db.execute("DELETE FROM items WHERE status = 'bad'").rowcount

    # --- uploads, one per distinct content
    def files_to_upload(self, limit: int) -> list[tuple[str, int, str, str, int]]:
        return self.db.execute(
            "SELECT f.hash, f.size, f.path, f.ctype, f.generation FROM files f WHERE f.upload_id IS NULL AND EXISTS"
            " (SELECT 1 FROM items i WHERE i.hash = f.hash AND i.status = 'new') LIMIT ?",
            (limit,),
        ).fetchall()

    def set_upload(self, content_hash: str, upload_id: str | None, *, next_generation: bool = False) -> None:
        self.db.execute(
            "UPDATE files SET upload_id = ?, generation = generation + ? WHERE hash = ?",
            (upload_id, 1 if next_generation else 0, content_hash),
        )

    def upload_of(self, content_hash: str) -> str | None:
        row = self.db.execute("SELECT upload_id FROM files WHERE hash = ?", (content_hash,)).fetchone()
        return row[0] if row else None

    def fail_hash(self, content_hash: str, error: str) -> None:
        """A file the API refused: every row with this content is bad."""
        self.db.execute(
            "UPDATE items SET status = 'bad', error = ?, batch = NULL WHERE hash = ? AND status IN ('new', 'assigned')",
            (error, content_hash),
        )

    # --- batches
    def ready_for_batch(self, limit: int) -> list[Item]:
        return self.items(
            "status = 'new' AND hash IN (SELECT hash FROM files WHERE upload_id IS NOT NULL)", (), limit
        )

    def assign(self, key: str, refs: list[str]) -> None:
        seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM batches").fetchone()[0]
        self.db.execute("INSERT OR IGNORE INTO batches (key, seq) VALUES (?, ?)", (key, seq))
        self.db.executemany(
            "UPDATE items SET status = 'assigned', batch = ? WHERE ref = ?", [(key, r) for r in refs]
        )

    def unsent_batches(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT key FROM batches WHERE batch_id IS NULL ORDER BY seq")]

    def drop_batch(self, key: str) -> None:
        """A batch the API refused (nothing was created): its items wait for the next one."""
        self.db.execute(
            "UPDATE items SET status = 'new', batch = NULL WHERE batch = ? AND status = 'assigned'", (key,)
        )
        self.db.execute("DELETE FROM batches WHERE key = ?", (key,))

    def submitted(self, key: str, batch_id: str, renders: list[tuple[str, str]], now: float) -> None:
        self.db.execute("UPDATE batches SET batch_id = ? WHERE key = ?", (batch_id, key))
        self.db.executemany(
            "UPDATE items SET status = 'submitted', render_id = ?, started = ? WHERE ref = ? AND batch = ?",
            [(rid, now, ref, key) for ref, rid in renders],
        )

    def open_batches(self) -> list[tuple[str, str]]:
        """(key, batch id) of sent batches with items not final yet."""
        return self.db.execute(
            "SELECT b.key, b.batch_id FROM batches b WHERE b.batch_id IS NOT NULL AND EXISTS"
            " (SELECT 1 FROM items i WHERE i.batch = b.key AND i.status IN ('submitted', 'succeeded')) ORDER BY b.seq"
        ).fetchall()

    def waiting_in(self, key: str) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM items WHERE batch = ? AND status = 'submitted'", (key,)
        ).fetchone()[0]

    def item_by_render(self, render_id: str) -> Item | None:
        found = self.items("render_id = ?", (render_id,), 1)
        return found[0] if found else None
