"""``synctalk dub``: the whole chain (preprocess, train, render) on a real face, and what it refuses."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from gpu_worker.media.binaries import ffmpeg_exe
from gpu_worker.media.probe import probe
from gpu_worker.preprocess.errors import ClipTooShortError
from gpu_worker.render.dub import dub, work_dir_for
from gpu_worker.render.options import RenderError, RenderOptions


def _clip(path, seconds: float):
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=64x48:rate=25:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=duration={seconds}", "-c:v", "libx264", "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )  # fmt: skip
    return path


def test_a_clip_too_short_is_refused_before_any_work(tmp_path, settings, monkeypatch):
    video = _clip(tmp_path / "short.mp4", 2.0)
    out = tmp_path / "out" / "dubbed.mp4"
    with pytest.raises(ClipTooShortError, match="at least 10 s"):
        dub(video, video, out, settings)
    assert not out.parent.exists()  # no output folder, no work folder: nothing was started

    from services.cli.main import cli

    monkeypatch.setenv("SYNCTALK_DATA_DIR", str(tmp_path / "data"))
    res = CliRunner().invoke(cli, ["dub", str(video), str(video), "--out", str(out)])
    assert res.exit_code != 0 and "[clip_too_short]" in res.output and "2.0 s" in res.output
    assert not out.parent.exists()


@pytest.mark.slow
def test_dub_a_real_face_then_rerun_reuses_the_finished_stages(
    sample_subject, sample_subject_b, settings, tmp_path
):
    """The sample subject (a real photo, 256 px, 25 fps, 6 s) learns with the tiny profile and says the
    second clip's speech, pasted into its own frame. A rerun only renders again."""
    settings = settings.model_copy(update={"min_train_seconds": 4.0})
    out = tmp_path / "dubbed.mp4"
    first = dub(sample_subject.video, sample_subject_b.speech, out, settings, profile="tiny")
    info = probe(out, settings, require_video=True, require_audio=True)
    src = probe(sample_subject.video, settings).video
    assert (info.video.width, info.video.height) == (src.display_width, src.display_height)
    speech_s = probe(sample_subject_b.speech, settings, require_video=False).audio.duration_s
    assert info.video.frame_count == round(speech_s * 25)
    assert first.render.qc["face_share"] is not None and first.render.qc_path.is_file()
    assert first.dataset.parent == first.model.parent == work_dir_for(out)

    model_file = first.model / "model.pt"
    stamp = model_file.stat().st_mtime_ns
    again = dub(
        sample_subject.video, sample_subject_b.speech, out, settings, profile="tiny",
        options=RenderOptions(mode="portrait"),
    )  # fmt: skip
    assert model_file.stat().st_mtime_ns == stamp  # not trained again
    assert again.render.mode == "portrait" and again.render.width == 64  # the tiny profile's 64 px crop

    with pytest.raises(RenderError, match="another video"):
        dub(sample_subject_b.video, sample_subject_b.speech, out, settings, profile="tiny")
