"""``synctalk remote ...``: the platform's API from the command line (services/client underneath).

The API's address and key come from ``--url``/``--key`` or ``SYNCTALK_API_URL``/``SYNCTALK_API_KEY``.
Nothing here imports torch or the server: these commands run on any machine with the client.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click


class RemoteGroup(click.Group):
    def invoke(self, ctx: click.Context):
        from services.client.bulk.manifest import ManifestError
        from services.client.errors import ClientError

        # the API's refusals and unreachable servers print one line, no traceback
        try:
            return super().invoke(ctx)
        except (ClientError, ManifestError) as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=RemoteGroup)
@click.option(
    "--url", envvar="SYNCTALK_API_URL", default=None, help="The API (default http://127.0.0.1:8000)."
)
@click.option("--key", envvar="SYNCTALK_API_KEY", default=None, help="An API key (synctalk keys create).")
@click.pass_context
def remote(ctx: click.Context, url: str | None, key: str | None) -> None:
    """Use a SyncTalk platform over its HTTP API: subjects, renders, bulk dubbing."""
    ctx.obj = {"url": url, "key": key}


def _client(ctx: click.Context):
    from services.client import Client

    return Client(ctx.obj["url"], ctx.obj["key"])


def _async_client(ctx: click.Context, concurrency: int):
    from services.client import AsyncClient

    return AsyncClient(ctx.obj["url"], ctx.obj["key"], max_connections=max(4, 2 * concurrency))


def _line(doc: dict) -> str:
    err = doc.get("error") or {}
    extra = f"  {err.get('code')}: {err.get('message')}" if err else ""
    pct = f"{100 * (doc.get('progress') or 0):.0f}%"
    name = doc.get("name") or doc.get("ref") or ""
    return f"{doc.get('object', ''):8} {doc['id']}  {doc.get('status', ''):9} {doc.get('stage') or '':10} {pct:>4}  {name}{extra}"


class _StageBar:
    """A job document -> the CLI's per-stage progress bars (one bar per stage, as local commands show)."""

    def __init__(self) -> None:
        from services.cli.progress import ProgressBar

        self.bar = ProgressBar()

    def __call__(self, doc: dict) -> None:
        stage = doc.get("stage") or doc.get("status", "")
        view = next((s for s in doc.get("stages") or [] if s.get("name") == stage), {})
        self.bar(stage, float(view.get("progress") or 0.0), view.get("message") or doc.get("message") or "")


# --- subjects
@remote.group()
def subjects() -> None:
    """Subjects: a person learned from a video."""


@subjects.command("create")
@click.argument("video", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="A name to show (default: the file's name).")
@click.option("--profile", type=click.Choice(["tiny", "preview", "standard"]), default=None)
@click.option("--wait", is_flag=True, help="Follow its stages until it is ready (or failed).")
@click.pass_context
def subjects_create(
    ctx: click.Context, video: Path, name: str | None, profile: str | None, wait: bool
) -> None:
    """Upload VIDEO (streamed from disk) and start learning the person in it; prints the subject id last."""
    with _client(ctx) as api:
        subject = api.upload_subject(video, name=name, profile=profile)
        click.echo(f"subject {subject['id']} {subject['status']}", err=True)
        if wait:
            bar = _StageBar()
            try:
                subject = api.wait_subject(subject["id"], on_progress=bar)
            finally:
                bar.bar.close()
            click.echo(_line(subject), err=True)
            if subject["status"] != "succeeded":
                raise click.ClickException(f"subject {subject['id']} {subject['status']}")
    click.echo(subject["id"])


# --- renders
@remote.command()
@click.argument("subject_id")
@click.argument(
    "audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Wait and download each video here as AUDIO-NAME.mp4 (else: print the render ids).")  # fmt: skip
@click.option("--mode", type=click.Choice(["fullframe", "portrait", "crop"]), default=None)
@click.pass_context
def render(
    ctx: click.Context, subject_id: str, audio: tuple[Path, ...], out_dir: Path | None, mode: str | None
) -> None:
    """Render each AUDIO file on SUBJECT_ID (for hundreds of files, use `remote dub`)."""
    with _client(ctx) as api:
        made = [(a, api.render_file(subject_id, a, mode=mode)) for a in audio]
        for _, r in made:
            click.echo(r["id"])
        if out_dir is None:
            return
        failed = 0
        for a, r in made:
            done = api.wait_render(r["id"])
            if done["status"] != "succeeded":
                failed += 1
                click.echo(_line(done), err=True)
                continue
            path = api.download_video(r["id"], out_dir / f"{a.stem}.mp4")
            click.echo(f"{path}", err=True)
        if failed:
            raise click.ClickException(f"{failed} of {len(made)} renders did not succeed")


# --- bulk
@remote.command()
@click.argument("subject_id")
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where the videos go (REF.mp4) and the state file a rerun resumes from.")  # fmt: skip
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Uploads and downloads in flight at once.")  # fmt: skip
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 1000))
@click.option("--mode", type=click.Choice(["fullframe", "portrait", "crop"]), default="fullframe",
              show_default=True, help="For rows that name no mode.")  # fmt: skip
@click.option("--retry-failed", is_flag=True, help="Submit failed renders and bad rows again.")
@click.option("--no-wait", is_flag=True, help="Stop once everything is submitted (rerun to download).")
@click.option("--poll", "poll_s", default=2.0, show_default=True, help="Seconds between status checks.")
@click.option("--inline/--no-inline", default=True, show_default=True,
              help="Send files up to 1 MB in the upload calls themselves (else one presigned PUT each).")  # fmt: skip
@click.pass_context
def dub(
    ctx: click.Context, subject_id: str, manifest: Path, out_dir: Path, concurrency: int, batch_size: int,
    mode: str, retry_failed: bool, no_wait: bool, poll_s: float, inline: bool,
) -> None:  # fmt: skip
    """Dub every track of MANIFEST onto SUBJECT_ID.

    MANIFEST: a CSV or JSONL with `audio` (a path, relative to the manifest), `ref` (the video's name) and
    optional `mode`; or a folder of audio files (ref = file name). Interrupt it at any point and run the
    same command again: it resumes, submitting and downloading nothing twice.
    """
    from services.client.bulk import DubOptions
    from services.client.bulk import dub as run_dub

    opts = DubOptions(subject_id, manifest, out_dir, concurrency=concurrency, batch_size=batch_size,
                      retry_failed=retry_failed, wait=not no_wait, poll_s=poll_s, mode=mode,
                      inline=inline)  # fmt: skip
    bar = _OverallBar()

    async def main():
        async with _async_client(ctx, concurrency) as api:
            return await run_dub(api, opts, bar)

    try:
        summary = asyncio.run(main())
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"\nInterrupted: run the same command again to resume (state in {out_dir}).", err=True)
        ctx.exit(130)
    bar.close()
    _print_summary(summary, waited=not no_wait)
    if not summary.ok:
        ctx.exit(1)


class _OverallBar:
    """One bar over the whole manifest: finished items of all, the current step as its description."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total or None, unit="track", dynamic_ncols=True)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.set_description(phase[:60])
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _print_summary(summary, *, waited: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    c = summary.counts
    console = Console(stderr=True)
    table = Table(title=f"dub summary ({summary.out})")
    table.add_column("")
    table.add_column("tracks", justify="right")
    rows = [("videos downloaded", c.get("downloaded", 0)), ("failed", c.get("failed", 0)),
            ("bad rows", c.get("bad", 0))]  # fmt: skip
    pending = sum(c.get(s, 0) for s in ("new", "assigned", "submitted", "succeeded"))
    if pending or not waited:
        rows.append(("not finished yet", pending))
    rows.append(("renders created by this run", summary.created))
    for label, n in rows:
        table.add_row(label, str(n))
    table.add_row("time", f"{summary.seconds:.1f} s")
    console.print(table)
    if summary.failed or summary.bad:
        reasons = Table(title="not dubbed")
        for col in ("ref", "", "reason"):
            reasons.add_column(col)
        for kind, pairs in (("failed", summary.failed), ("bad row", summary.bad)):
            for ref, why in pairs:
                reasons.add_row(ref, kind, why)
        console.print(reasons)
        console.print("Fix the rows and rerun with --retry-failed to try them again.")


# --- looking around
@remote.command()
@click.argument("job_id", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Instead of a job: a dub's folder, read from its state file.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The whole document as JSON.")
@click.pass_context
def status(ctx: click.Context, job_id: str | None, out_dir: Path | None, as_json: bool) -> None:
    """Where a subject, render or batch JOB_ID stands (or a dub's folder with --out)."""
    from services.client.errors import NotFound

    if out_dir is not None:
        from services.client.bulk.runner import state_summary

        _print_summary(state_summary(out_dir), waited=True)
        return
    if not job_id:
        raise click.UsageError("give a JOB_ID or --out DIR")
    with _client(ctx) as api:
        for getter in (api.get_render, api.get_subject, api.get_batch):
            try:
                doc = getter(job_id)
                break
            except NotFound:
                continue
        else:
            raise click.ClickException(f"no subject, render or batch {job_id!r}")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif doc.get("object") == "batch":
        counts = " ".join(f"{k}={v}" for k, v in doc.get("counts", {}).items())
        click.echo(f"batch    {doc['id']}  {doc.get('total')} renders  {counts}")
    else:
        click.echo(_line(doc))
        for s in doc.get("stages") or []:
            click.echo(
                f"  {s['name']:12} {s['status']:9} {100 * (s.get('progress') or 0):4.0f}%  {s.get('message') or ''}"
            )


@remote.command("list")
@click.option("--subjects", "what", flag_value="subjects", help="List subjects.")
@click.option("--renders", "what", flag_value="renders", default=True, help="List renders (the default).")
@click.option(
    "--status", type=click.Choice(["queued", "running", "succeeded", "failed", "canceled"]), default=None
)
@click.option("--subject", "subject_id", default=None, help="Renders of this subject only.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.pass_context
def list_(ctx: click.Context, what: str, status: str | None, subject_id: str | None, limit: int) -> None:
    """The newest subjects or renders."""
    with _client(ctx) as api:
        if what == "subjects":
            page = api.list_subjects(limit=limit, status=status)
        else:
            page = api.list_renders(limit=limit, status=status, subject_id=subject_id)
    for doc in page["items"]:
        click.echo(_line(doc))


@remote.command()
@click.argument("render_id")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the MP4 (default: RENDER_ID.mp4, or REF.mp4 where the render has a ref).")  # fmt: skip
@click.pass_context
def download(ctx: click.Context, render_id: str, out_path: Path | None) -> None:
    """Download a finished render's video (resumed if an earlier try stopped part way)."""
    from services.client.bulk.runner import out_name

    with _client(ctx) as api:
        if out_path is None:
            doc = api.get_render(render_id)
            out_path = Path(out_name(doc.get("ref") or render_id))
        click.echo(api.download_video(render_id, out_path))
