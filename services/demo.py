"""`make demo`: the product's main job on the embedded default, over HTTP like any client.

sample subject (two clips of one person, made offline) -> ``synctalk serve`` (SQLite, a storage
folder, a broker file, a worker per queue) -> a key -> the training clip uploaded as a subject, its
stages followed live -> the second clip's speech submitted as a render -> the dubbed video downloaded,
its path and quality checks printed. A rerun reuses the subject already trained (found by name).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx

from shared.settings import get_settings

SUBJECT_NAME = "demo sample"


def _step(title: str) -> float:
    click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def _progress(step: str, fraction: float, message: str) -> None:
    click.echo(f"\r  {step:<18} {fraction * 100:5.1f}%  {message[:70]:<70}", nl=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(env: dict, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise click.ClickException(f"synctalk {args[0]} failed: {out.stderr.strip()[-2000:]}")
    return out.stdout


def _follow(client: httpx.Client, path: str, timeout_s: float = 3 * 3600) -> dict:
    """Print a job's stage and progress live until it finishes; returns its last document."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = client.get(path).json()
        eta = f", eta {doc['eta_s'] / 60:.1f} min" if doc.get("eta_s") else ""
        _progress(
            doc.get("stage") or doc["status"],
            doc["progress"],
            f"{doc['status']}{eta}: {doc.get('message') or ''}",
        )
        if doc["status"] in ("succeeded", "failed", "canceled"):
            click.echo()
            return doc
        time.sleep(2)
    raise click.ClickException(f"{path} did not finish in {timeout_s / 3600:.0f} h")


@click.command()
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True
)
@click.option("--seconds", type=float, default=20.0, show_default=True, help="Length of the training clip.")
@click.option("--size", type=int, default=256, show_default=True, help="Frame size of the sample clips.")
@click.option(
    "--profile", default="preview", show_default=True, help="Training profile (tiny for a smoke run)."
)
def main(out_dir: Path, seconds: float, size: int, profile: str) -> None:
    """Run the platform on the embedded default and dub the sample subject over HTTP."""
    from gpu_worker.sample import make_sample

    settings = get_settings()
    out_dir = out_dir.absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    t = _step("1/5 sample subject: a real photo animated by offline speech")
    clip, speech = out_dir / "sample", out_dir / "sample_new_audio"
    if not (clip / "truth.json").exists():
        make_sample(clip, seconds=seconds, size=size, seed=0, settings=settings, progress=_progress)
    if not (speech / "truth.json").exists():
        make_sample(speech, seconds=10.0, size=size, seed=1, settings=settings, progress=_progress)
    click.echo(f"\n  done in {time.perf_counter() - t:.1f} s")

    t = _step("2/5 the platform: synctalk serve on the embedded default, and an API key")
    port = _free_port()
    env = {
        **os.environ,
        "SYNCTALK_DATA_DIR": str(out_dir / "platform"),
        "SYNCTALK_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PYTHONUNBUFFERED": "1",
    }
    _cli(env, "migrate")
    key = _cli(env, "keys", "create", "--tenant", "demo").strip().splitlines()[-1]
    log = open(out_dir / "serve.log", "ab")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve", "--port", str(port)], env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise click.ClickException(f"synctalk serve stopped; see {out_dir / 'serve.log'}")
            time.sleep(0.5)
        click.echo(f"  API on {base} (OpenAPI at {base}/docs), log in {out_dir / 'serve.log'}")
        click.echo(f"  done in {time.perf_counter() - t:.1f} s")
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        _dub(client, clip / "subject.mp4", speech / "speech.wav", out_dir, profile)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    click.secho(f"\nDemo finished in {(time.perf_counter() - started) / 60:.1f} min.", bold=True)


def _dub(client: httpx.Client, video: Path, speech: Path, out_dir: Path, profile: str) -> None:
    """Steps 3-5: the subject (or the one trained before), a render, the download."""
    t = _step(f"3/5 the subject over HTTP: ingest, preprocess, train ({profile} profile)")
    ready = [
        s
        for s in client.get("/v1/subjects", params={"status": "succeeded"}).json()["items"]
        if s["name"] == SUBJECT_NAME
    ]
    if ready and ready[0]["profile"] == profile:
        subject = ready[0]
        click.echo(f"  reusing subject {subject['id']}, trained before")
    else:
        with open(video, "rb") as fh:
            r = client.post(
                "/v1/subjects", files={"video": (video.name, fh, "video/mp4")},
                data={"name": SUBJECT_NAME, "profile": profile},
            )  # fmt: skip
        if r.status_code != 202:
            raise click.ClickException(f"the subject was refused: {r.text}")
        subject = _follow(client, r.headers["location"])
        if subject["status"] != "succeeded":
            raise click.ClickException(f"the subject {subject['status']}: {subject['error']}")
    report, metrics = subject.get("report") or {}, (subject.get("metrics") or {}).get("self_driven", {})
    click.echo(
        f"  done in {time.perf_counter() - t:.1f} s; face in {report.get('face_detection_ratio', 0) * 100:.0f}% "
        f"of frames; validation PSNR {metrics.get('psnr', float('nan')):.2f} dB "
        f"(against the real frames {metrics.get('psnr_frames') or float('nan'):.2f} dB)"
    )

    t = _step("4/5 a render: the second clip's speech, fullframe")
    with open(speech, "rb") as fh:
        r = client.post(
            f"/v1/subjects/{subject['id']}/renders", files={"audio": (speech.name, fh, "audio/wav")}
        )
    if r.status_code != 202:
        raise click.ClickException(f"the render was refused: {r.text}")
    render = _follow(client, r.headers["location"])
    if render["status"] != "succeeded":
        raise click.ClickException(f"the render {render['status']}: {render['error']}")
    click.echo(f"  done in {time.perf_counter() - t:.1f} s")

    t = _step("5/5 download the dubbed video and its quality checks")
    path = out_dir / "dub.mp4"
    with client.stream("GET", f"/v1/renders/{render['id']}/video", follow_redirects=True) as resp:
        resp.raise_for_status()
        with open(path, "wb") as out:
            for chunk in resp.iter_bytes(1 << 20):
                out.write(chunk)
    qc = render["qc"]
    (out_dir / "dub.qc.json").write_text(json.dumps(qc, indent=2))
    click.echo(f"  dubbed video:   {path} ({render['duration_s']:.1f} s, {path.stat().st_size / 1e6:.1f} MB)")
    click.echo(f"  quality checks: {out_dir / 'dub.qc.json'}")
    click.echo(
        "  QC: "
        + json.dumps(
            {
                "flags": qc.get("flags"),
                "face_share": qc.get("face_share"),
                "mouth_envelope_corr_best": _round(qc.get("mouth_envelope_corr_best")),
                "sync_confidence": _round((qc.get("sync") or {}).get("confidence")),
            }
        )
    )


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)


if __name__ == "__main__":
    main()
