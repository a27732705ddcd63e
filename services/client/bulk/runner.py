"""``dub()``: a manifest of speech tracks onto one subject, from the first upload to the last video on disk.

Steps, each resumable from the state file (state.py): read and check the manifest (hashing each file);
upload each distinct content once (presigned PUTs, ``concurrency`` at a time); submit in batches of up
to 1000 (the batch recorded before it is sent, its key derived from its items); follow the batches and
download each video as it finishes (``OUT/<ref>.mp4``, through a ``.part`` file, resumed).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.client.aio import AsyncClient
from services.client.bulk.keys import batch_key, file_sha256, files_key, upload_key, uploads_key
from services.client.bulk.manifest import ManifestError, read_manifest
from services.client.bulk.state import State
from services.client.config import content_type_of
from services.client.errors import ApiError, Conflict
from services.client.types import Upload

Progress = Callable[[str, int, int], None]  # (what is happening, items finished, items in all)
FileRow = tuple[str, int, str, str, int]  # (content hash, size, path, content type, upload generation)
_ITEM_ERROR = re.compile(r"^items\[(\d+)\]: (.*)$", re.S)
_REUPLOAD = ("upload_not_found", "upload_incomplete")  # expired or lost: upload the file again
MAX_LISTED = 50
INLINE_FILE_MAX = 1 << 20  # files up to this size are sent in the upload call itself (short speech tracks)
INLINE_CALL_MAX = 32 << 20  # bytes per such call (the API takes 64 MB)
INLINE_CALL_FILES = 500  # files per such call (the API takes 1000)
INLINE_IN_FLIGHT = 2  # such calls at once


@dataclass
class DubOptions:
    subject_id: str
    manifest: Path
    out: Path
    concurrency: int = 8
    """Uploads and downloads in flight at once."""
    batch_size: int = 1000
    """Items per POST /v1/batches (the API takes at most 1000)."""
    retry_failed: bool = False
    """Take failed renders and bad rows up again (otherwise a rerun leaves them as they are)."""
    wait: bool = True
    """Follow the renders and download the videos; False: stop once everything is submitted."""
    poll_s: float = 2.0
    mode: str = "fullframe"
    """For rows that name no mode."""
    inline: bool = True
    """Send small files (up to 1 MB) in the upload calls themselves, a few thousand per call, rather than
    one presigned PUT each (a server without that route gets presigned uploads anyway)."""


@dataclass
class Summary:
    counts: dict[str, int]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (ref, reason), the first MAX_LISTED
    bad: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    created: int = 0  # renders this run submitted (a rerun that only resumes creates none)
    out: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.counts.get("failed") and not self.counts.get("bad")


def out_name(ref: str) -> str:
    """The video's file name for a ref: the ref itself where it is a safe name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", ref).strip("._") or "render"
    return f"{safe[:200]}.mp4"


class _Dub:
    def __init__(self, api: AsyncClient, opts: DubOptions, progress: Progress | None) -> None:
        self.api, self.o = api, opts
        self.state = State(opts.out)
        self.progress = progress or (lambda *_: None)
        self.created = 0
        self.sem = asyncio.Semaphore(max(1, opts.concurrency))
        self._bulk = True  # uploads made by POST /v1/uploads/batch, until the server turns out to lack it
        self._inline = opts.inline  # small files sent in POST /v1/uploads/files, likewise

    def report(self, phase: str) -> None:
        c = self.state.counts()
        total = sum(c.values()) - c.get("bad", 0)
        self.progress(phase, c.get("downloaded", 0) + c.get("failed", 0) if self.o.wait else
                      total - c.get("new", 0) - c.get("assigned", 0), total)  # fmt: skip

    # --- 1. the manifest, one row at a time
    def ingest(self) -> None:
        st = self.state
        known = st.meta("subject_id")
        if known is not None and known != self.o.subject_id:
            raise ManifestError(f"{self.o.out} holds a dub onto subject {known}; use another --out folder")
        hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> hash, bounded
        st.db.execute("BEGIN IMMEDIATE")
        try:
            st.set_meta("subject_id", self.o.subject_id)
            if self.o.retry_failed:
                st.retry_failed()
            for n, row in enumerate(read_manifest(self.o.manifest), start=1):
                if n % 1000 == 0:
                    st.db.execute("COMMIT")
                    self.progress(f"checking manifest ({n} rows)", 0, 0)
                    st.db.execute("BEGIN IMMEDIATE")
                mode = row.mode or self.o.mode
                seen = st.line_of(row.ref)
                if seen == row.line:
                    continue  # known from an earlier run
                if seen is not None:  # two rows, one ref: they would write the same video
                    dup = f"{row.ref}@row{row.line}"
                    if st.line_of(dup) is None:
                        st.add_item(dup, row.line, str(row.audio), mode, None,
                                    f"ref {row.ref!r} is already used by row {seen}; refs must be unique")  # fmt: skip
                    continue
                if row.error:
                    st.add_item(row.ref, row.line, str(row.audio), mode, None, row.error)
                    continue
                info = row.audio.stat()
                cache_key = (str(row.audio), info.st_size, info.st_mtime_ns)
                digest = hashes.get(cache_key)
                if digest is None:
                    if len(hashes) > 10_000:
                        hashes.clear()
                    digest = hashes[cache_key] = file_sha256(row.audio)
                st.add_file(digest, info.st_size, str(row.audio), content_type_of(row.audio.name))
                st.add_item(row.ref, row.line, str(row.audio), mode, digest, None)
            st.db.execute("COMMIT")
        except BaseException:
            st.db.execute("ROLLBACK")
            raise

    # --- 2. one upload per distinct content: made a thousand per call, then PUT ``concurrency`` at a time
    async def upload(self) -> None:
        while rows := self.state.files_to_upload(1000):
            if self._inline:
                small = [r for r in rows if r[1] <= INLINE_FILE_MAX]
                rows = [r for r in rows if r[1] > INLINE_FILE_MAX] + await self._send_inline(small)
            made = await self._create_uploads(rows)
            done: list[tuple[str, str]] = []
            await asyncio.gather(*(self._put_one(r, made[r[0]], done) for r in rows if r[0] in made))
            self._record(done)
            self.report("uploading")

    async def upload_and_submit(self) -> None:
        """Uploads and batches overlapped: each whole batch is sent as soon as its files are up, while the
        next files upload (the API creates a batch's renders while storage takes the next files)."""
        uploading = asyncio.create_task(self.upload())
        try:
            while not uploading.done():
                await self.submit(full_only=True)
                await asyncio.wait({uploading}, timeout=0.2)
            uploading.result()
        finally:
            if not uploading.done():  # submit failed: stop uploading too, the rerun resumes both
                uploading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await uploading
        await self.submit()

    def _record(self, done: list[tuple[str, str]]) -> None:
        with self.state:  # lost on a crash? harmless: the same key gives back the same upload
            for digest, upload_id in done:
                self.state.set_upload(digest, upload_id)

    async def _send_inline(self, rows: list[FileRow]) -> list[FileRow]:
        """Small files sent in the calls themselves, up to INLINE_CALL_FILES files and INLINE_CALL_MAX
        bytes a call, INLINE_IN_FLIGHT calls at once (the API reads one call's form while it stores the
        other's files); what is left for presigned uploads is returned (everything, where the server has
        no such route)."""
        calls: list[list[FileRow]] = [[]]
        size = 0
        for r in rows:
            if calls[-1] and (len(calls[-1]) >= INLINE_CALL_FILES or size + r[1] > INLINE_CALL_MAX):
                calls.append([])
                size = 0
            calls[-1].append(r)
            size += r[1]
        lanes = asyncio.Semaphore(INLINE_IN_FLIGHT)

        async def send(call: list[FileRow]) -> list[FileRow]:
            async with lanes:
                return await self._send_inline_call(call)

        left = await asyncio.gather(*(send(c) for c in calls if c))
        return [r for rows_left in left for r in rows_left]

    async def _send_inline_call(self, call: list[FileRow]) -> list[FileRow]:
        """One call's files sent; a refused one set aside and the rest sent again. Returns the rows left
        for presigned uploads (all of them where the server lacks the route)."""
        while call and self._inline:
            try:
                contents = await asyncio.to_thread(lambda c=call: [Path(r[2]).read_bytes() for r in c])
            except FileNotFoundError as exc:  # moved while dubbing: set that one aside
                gone = next((r for r in call if Path(r[2]) == Path(exc.filename or "")), None)
                if gone is None:
                    raise
                with self.state:
                    self.state.fail_hash(
                        gone[0], f"{Path(gone[2]).name}: file not found (moved while dubbing?)"
                    )
                call = [r for r in call if r is not gone]
                continue
            keys = [upload_key(d, n, ctype, Path(path).name, gen) for d, n, path, ctype, gen in call]
            files = [(Path(r[2]).name, data, r[3]) for r, data in zip(call, contents, strict=True)]
            try:
                got = await self.api.upload_files(files, idempotency_key=files_key(keys))
            except ApiError as exc:
                if exc.status in (404, 405):  # a server from before POST /v1/uploads/files
                    self._inline = False
                    return call
                bad = self._refused_item(exc, call)
                call = [r for r in call if r is not bad]
                continue
            self._record([(r[0], up["id"]) for r, up in zip(call, got["data"], strict=True)])
            self.report("uploading")
            return []
        return call

    def _refused_item(self, exc: ApiError, rows: list[FileRow]) -> FileRow:
        """The row a call refused by naming ``items[i]`` (too large, not media), set aside as bad; any
        other error is raised."""
        m = _ITEM_ERROR.match(exc.detail)
        if m is None or exc.status not in (413, 415, 422):
            raise exc
        bad = rows[int(m.group(1))]
        with self.state:
            self.state.fail_hash(bad[0], f"{exc.code}: {m.group(2)}")
        return bad

    async def _create_uploads(self, rows: list[FileRow]) -> dict[str, Upload]:
        """Uploads for ``rows`` by content hash; a row whose file cannot be uploaded is set aside."""
        while rows and self._bulk:
            keys = [upload_key(d, size, ctype, Path(path).name, gen) for d, size, path, ctype, gen in rows]
            files = [(Path(path).name, ctype, size) for _, size, path, ctype, _ in rows]
            try:
                got = await self.api.create_uploads(files, idempotency_key=uploads_key(keys))
            except ApiError as exc:
                if exc.status in (404, 405):  # a server from before POST /v1/uploads/batch
                    self._bulk = False
                    break
                bad = self._refused_item(exc, rows)  # too large or not media: set aside, the rest go again
                rows = [r for r in rows if r is not bad]
                continue
            return {r[0]: up for r, up in zip(rows, got["data"], strict=True)}
        made: dict[str, Upload] = {}
        await asyncio.gather(*(self._create_one(r, made) for r in rows))
        return made

    async def _create_one(self, row: FileRow, made: dict[str, Upload]) -> None:
        digest, size, path, ctype, generation = row
        name = Path(path).name
        async with self.sem:
            try:
                made[digest] = await self.api.create_upload(
                    name, ctype, size, idempotency_key=upload_key(digest, size, ctype, name, generation)
                )
            except ApiError as exc:
                self._upload_failed(digest, exc)

    async def _put_one(self, row: FileRow, up: Upload, done: list[tuple[str, str]]) -> None:
        digest, _, path, _, _ = row
        async with self.sem:
            try:
                await self.api.put_file(up, path)
            except FileNotFoundError:
                with self.state:
                    self.state.fail_hash(digest, f"{Path(path).name}: file not found (moved while dubbing?)")
                return
            except ApiError as exc:
                self._upload_failed(digest, exc)
                return
        done.append((digest, up["id"]))

    def _upload_failed(self, digest: str, exc: ApiError) -> None:
        with self.state:
            if isinstance(exc, Conflict) or exc.status == 403:  # a key or URL gone stale: anew
                self.state.set_upload(digest, None, next_generation=True)
            elif exc.status in (413, 415, 422):
                self.state.fail_hash(digest, f"{exc.code}: {exc.detail}")
            else:
                raise exc

    # --- 3. batches: recorded, then sent
    async def submit(self, *, full_only: bool = False) -> None:
        """Send what is uploaded, in batches; ``full_only``: only whole batches (uploads are still going)."""
        for key in self.state.unsent_batches():  # from a run that stopped before hearing back
            await self._send(key)
        while items := self.state.ready_for_batch(self.o.batch_size):
            if full_only and len(items) < self.o.batch_size:
                return
            uploads = {i.hash: self.state.upload_of(i.hash) for i in items}
            key = batch_key(self.o.subject_id,
                            ((i.ref, i.hash, uploads[i.hash], i.mode, i.attempt) for i in items))  # fmt: skip
            with self.state:
                self.state.assign(key, [i.ref for i in items])
            await self._send(key)
            self.report("submitting")

    async def _send(self, key: str) -> None:
        items = self.state.items("batch = ? AND status = 'assigned'", (key,))
        if not items:
            with self.state:
                self.state.drop_batch(key)
            return
        body = [{"upload_id": self.state.upload_of(i.hash), "ref": i.ref, "mode": i.mode} for i in items]
        try:
            batch = await self.api.create_batch(self.o.subject_id, body, idempotency_key=key)
        except ApiError as exc:
            m = _ITEM_ERROR.match(exc.detail)
            if m is None:
                raise
            # one item refused the whole batch (nothing was created): set it aside, the rest go again
            bad = items[int(m.group(1))]
            with self.state:
                if exc.code in _REUPLOAD:
                    self.state.set_upload(bad.hash, None, next_generation=True)
                else:
                    self.state.fail_hash(bad.hash, f"{exc.code}: {m.group(2)}")
                self.state.drop_batch(key)
            return
        # the answer lists the renders in the items' order (a replay answers the original)
        pairs = [(i.ref, r["id"]) for i, r in zip(items, batch["renders"], strict=True)]
        with self.state:
            self.state.submitted(key, batch["id"], pairs, time.time())
        self.created += len(pairs)

    # --- 4. follow, download as they finish
    async def watch(self) -> None:
        running: dict[str, asyncio.Task] = {}
        while True:
            await self._poll()
            for item in self.state.items("status = 'succeeded'", (), 500):
                if item.ref not in running:
                    running[item.ref] = asyncio.create_task(self._download(item.ref, item.render_id or ""))
            for ref in [r for r, task in running.items() if task.done()]:
                running.pop(ref).result()  # an unexpected error stops the run (rerun resumes)
            c = self.state.counts()
            waiting = c.get("submitted", 0) + c.get("succeeded", 0)
            self.report(f"rendering ({c.get('submitted', 0)} waiting, {len(running)} downloading)")
            if not waiting and not running:
                return
            await asyncio.sleep(self.o.poll_s if not running else min(self.o.poll_s, 0.5))

    async def _poll(self) -> None:
        for key, batch_id in self.state.open_batches():
            waiting = self.state.waiting_in(key)
            if not waiting:
                continue
            batch = await self.api.get_batch(batch_id)
            counts = batch.get("counts", {})
            if counts.get("queued", 0) + counts.get("running", 0) >= waiting:
                continue  # nothing finished that we do not know of
            for status in ("succeeded", "failed", "canceled"):
                if not counts.get(status):
                    continue
                updates = []
                async for r in self.api.iter_renders(batch_id=batch_id, status=status):
                    item = self.state.item_by_render(r["id"])
                    if item is None or item.status != "submitted":
                        continue
                    if status == "succeeded":
                        updates.append((item.ref, "succeeded", None))
                    else:
                        err = r.get("error") or {}
                        reason = f"{err.get('code', status)}: {err.get('message', '')}".rstrip(": ")
                        updates.append((item.ref, "failed", reason))
                with self.state:
                    now = time.time()
                    for ref, st, reason in updates:
                        self.state.set_status(ref, st, reason, when=now if st == "failed" else None)

    async def _download(self, ref: str, render_id: str) -> None:
        dest = self.o.out / out_name(ref)
        async with self.sem:
            if not dest.exists():  # else: renamed into place before a crash let us record it
                try:
                    await self.api.download_video(render_id, dest)
                except ApiError as exc:
                    with self.state:
                        self.state.set_status(
                            ref, "failed", f"download: {exc.code}: {exc.detail}", when=time.time()
                        )
                    return
        with self.state:
            self.state.set_status(ref, "downloaded", when=time.time())

    def summary(self, seconds: float) -> Summary:
        st = self.state
        return Summary(
            counts=st.counts(),
            failed=[(i.ref, i.error or "") for i in st.items("status = 'failed'", (), MAX_LISTED)],
            bad=[(i.ref, i.error or "") for i in st.items("status = 'bad'", (), MAX_LISTED)],
            seconds=seconds,
            created=self.created,
            out=self.o.out,
        )


async def dub(api: AsyncClient, opts: DubOptions, progress: Progress | None = None) -> Summary:
    """Run (or resume) a dub; returns its summary. Safe to interrupt at any point and run again."""
    t0 = time.monotonic()
    run = _Dub(api, opts, progress)
    try:
        run.progress("checking manifest", 0, 0)
        await asyncio.to_thread(lambda: None)  # let a caller's progress display draw first
        run.ingest()
        for _ in range(3):  # a second round only where an upload expired and must be made again
            await run.upload_and_submit()
            if not run.state.files_to_upload(1):
                break
        if opts.wait:
            await run.watch()
        run.report("done")
        return run.summary(time.monotonic() - t0)
    finally:
        run.state.close()


def state_summary(out: Path) -> Summary:
    """What the state file in ``out`` says, without contacting the API (``remote status --out``)."""
    if not (out / ".synctalk-dub.sqlite").exists():
        raise ManifestError(f"{out} holds no dub state")
    st = State(out)
    try:
        return Summary(
            counts=st.counts(),
            failed=[(i.ref, i.error or "") for i in st.items("status = 'failed'", (), MAX_LISTED)],
            bad=[(i.ref, i.error or "") for i in st.items("status = 'bad'", (), MAX_LISTED)],
            out=out,
        )
    finally:
        st.close()
