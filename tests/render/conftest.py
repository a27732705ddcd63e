"""Fixtures of the render tests: a tiny trained subject whose dataset points into real source videos of
other sizes and frame rates than the model's, and speech tracks of several kinds, all made on the fly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))

from synthetic import make_synthetic_dataset  # noqa: E402

from gpu_worker.media.binaries import ffmpeg_exe  # noqa: E402

N_FRAMES, RES = 44, 48  # the synthetic subject: 44 dataset frames (1.76 s at 25 fps), 48 px crops


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-nostdin", *args], check=True, timeout=120)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_source(path: Path, width: int, height: int, fps: str, seconds: float) -> Path:
    """A moving test pattern (every frame differs) as H.264 with AAC audio: the subject's 'source'."""
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=300:duration={seconds}",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "12", "-c:a", "aac", "-shortest", str(path),
    )  # fmt: skip
    return path


def point_dataset_at_source(
    dataset: Path, out: Path, source: Path, width: int, height: int, x0: int, y0: int
):
    """A copy of ``dataset`` whose crop lies at (x0, y0) inside a width x height ``source``."""
    shutil.copytree(dataset, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["crop"] = {
        "source_width": width, "source_height": height, "x0": x0, "y0": y0, "size": RES, "resolution": RES,
    }  # fmt: skip
    manifest["source_probe"] = {"path": str(source)}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


class Subject:
    def __init__(
        self, dataset: Path, source: Path, fps: Fraction, size: tuple[int, int], box: tuple[int, int]
    ):
        self.dataset, self.source, self.fps, self.size, self.box = dataset, source, fps, size, box


@pytest.fixture(scope="session")
def render_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("render")


@pytest.fixture(scope="session")
def base_dataset(render_root) -> Path:
    return make_synthetic_dataset(render_root / "ds", n_frames=N_FRAMES, res=RES, seed=3)


@pytest.fixture(scope="session")
def tiny_model(base_dataset, render_root) -> Path:
    """A tiny model with every stage (head, lips, torso) trained on the synthetic subject."""
    from gpu_worker.model.config import profile_config
    from gpu_worker.model.trainer import train_model

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_model(base_dataset, render_root / "model", profile_config("tiny"))
    finally:
        torch.set_num_threads(old)
    return render_root / "model"


@pytest.fixture(scope="session")
def head_only_model(base_dataset, render_root) -> Path:
    """The same subject with only the head stage trained (no torso: the dataset's torso layer is used)."""
    from gpu_worker.model.config import profile_config
    from gpu_worker.model.trainer import train_model

    train_model(base_dataset, render_root / "model_head", profile_config("tiny", "head"))
    return render_root / "model_head"


SOURCES = {
    # name: (width, height, fps, crop x0, y0): non-square, not 25 fps
    "112x80@30": (112, 80, "30", 40, 16),
    "176x144@29.97": (176, 144, "30000/1001", 64, 40),
}


@pytest.fixture(scope="session", params=sorted(SOURCES))
def subject(request, base_dataset, render_root) -> Subject:
    w, h, fps, x0, y0 = SOURCES[request.param]
    tag = request.param.replace("@", "_").replace(".", "")
    source = make_source(render_root / f"source_{tag}.mp4", w, h, fps, N_FRAMES / 25)
    ds = point_dataset_at_source(base_dataset, render_root / f"ds_{tag}", source, w, h, x0, y0)
    return Subject(ds, source, Fraction(fps), (w, h), (x0, y0))


@pytest.fixture(scope="session")
def speech_mp3(render_root) -> Path:
    """3 s of 'speech-like' audio (a tone whose loudness moves like syllables), 44.1 kHz stereo MP3."""
    path = render_root / "speech.mp3"
    ffmpeg(
        "-f", "lavfi", "-i",
        "aevalsrc='0.4*sin(2*PI*180*t)*(0.55+0.45*sin(2*PI*3.3*t))|0.4*sin(2*PI*180*t)*(0.55+0.45*sin(2*PI*3.3*t))':s=44100:d=3",
        "-c:a", "libmp3lame", "-b:a", "128k", str(path),
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def silent_wav(render_root) -> Path:
    path = render_root / "silence.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "2", str(path))
    return path
