"""The render stage on a tiny trained subject: real source videos of other sizes and rates, real speech
files of several kinds, the output probed and decoded as a viewer's player would."""

from __future__ import annotations

import json
from fractions import Fraction

import cv2
import numpy as np
import pytest

from gpu_worker.media.errors import MediaError
from gpu_worker.media.frames import FrameReader
from gpu_worker.media.probe import probe
from gpu_worker.render.compose import PasteBack
from gpu_worker.render.driving import build_timeline
from gpu_worker.render.options import RenderOptions
from gpu_worker.render.source import SourceVideo
from gpu_worker.render.stage import Renderer, qc_path_for

SPEECH_S = 3.0


def _moov_before_mdat(path) -> bool:
    """+faststart: the index (moov) precedes the media data, so playback starts before the download ends."""
    data = path.read_bytes()
    return 0 <= data.find(b"moov") < data.find(b"mdat")


def test_fullframe_keeps_the_source_size_rate_and_pixels(tiny_model, subject, speech_mp3, settings, tmp_path):
    renderer = Renderer(tiny_model, settings, dataset=subject.dataset)
    result = renderer.render(speech_mp3, tmp_path / "out.mp4", RenderOptions(mode="fullframe", crf=0))

    fps = subject.fps
    n = round(SPEECH_S * fps)
    info = probe(result.video, settings, require_video=True, require_audio=True)
    v = info.video
    assert (v.width, v.height) == subject.size == (result.width, result.height)
    assert v.codec == "h264" and info.audio.codec == "aac"
    assert v.frame_count == n == result.frames
    assert abs(v.avg_fps - float(fps)) < 1e-3 and result.fps == str(fps)
    assert abs(info.duration_s - SPEECH_S) <= 1 / float(fps)  # the audio's duration within one frame
    assert abs(info.audio.duration_s - SPEECH_S) <= 1 / float(fps)
    assert _moov_before_mdat(result.video)

    # Outside the face region every pixel is the driving source frame's own (two H.264 generations
    # apart); the next source frame is measurably further away, so the frames are also matched in time.
    sub = renderer.subject
    paste = PasteBack(sub.crop, sub.model_res, subject.size)
    walk = build_timeline(sub.usable, fps=fps, slot_count=10**6).walk(0, n)
    own, other, inside = [], [], []
    with SourceVideo(subject.source, settings) as src, FrameReader(result.video, settings=settings) as reader:
        for j, frame in enumerate(reader):
            near = int(np.clip(np.rint(walk[j] * 25 / float(fps)), 0, sub.info.frame_count - 1))
            mask = np.zeros(frame.shape[:2], np.float32)
            bw, bh = paste.box_size
            m = cv2.warpAffine(
                sub.images.get("face_mask", near, sub.dataset_res) * paste.feather,
                paste.mask_to_box,
                (bw, bh),
            )
            mask[paste.y0 : paste.y1, paste.x0 : paste.x1] = m
            outside = cv2.dilate((mask > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
            f = frame.astype(np.float32)
            own.append(np.abs(f - src.frame(int(walk[j])))[outside].mean())
            other.append(np.abs(f - src.frame(int(min(walk[j] + 1, src.frame_count - 1))))[outside].mean())
            inside.append(np.abs(f - src.frame(int(walk[j])))[mask > 0.9].mean())
    assert len(own) == n
    # crf 0 (lossless x264): what is left is the RGB <-> 4:2:0 round trip of a detailed pattern, about
    # 2 levels (the same frames encoded with no render at all give 1.9-2.4)
    assert max(own) < 3.5, max(own)
    assert np.mean(own) < 0.4 * np.mean(other)
    assert np.mean(inside) > 10  # the face region is the render, not the source


def test_portrait_and_crop_play_at_the_model_rate(tiny_model, subject, speech_mp3, settings, tmp_path):
    renderer = Renderer(tiny_model, settings, dataset=subject.dataset)
    sub = renderer.subject
    for mode, side in (("portrait", sub.dataset_res), ("crop", sub.model_res)):
        result = renderer.render(speech_mp3, tmp_path / f"{mode}.mp4", RenderOptions(mode=mode, qc=False))
        info = probe(result.video, settings, require_video=True, require_audio=True)
        assert (info.video.width, info.video.height) == (side, side)
        assert info.video.frame_count == round(SPEECH_S * 25) and abs(info.video.avg_fps - 25) < 1e-3
        assert result.qc_path is None and not qc_path_for(result.video).exists()
    # portrait: outside the face mask, the real crop of the driving frame
    walk = build_timeline(sub.usable, fps=Fraction(25)).walk(0, 10)
    with FrameReader(tmp_path / "portrait.mp4", settings=settings) as reader:
        for j, frame in zip(range(10), reader, strict=False):
            real = sub.images.get("frames", int(walk[j]), sub.dataset_res).astype(np.float32)
            outside = sub.images.get("face_mask", int(walk[j]), sub.dataset_res) == 0
            assert np.abs(frame.astype(np.float32) - real)[outside].mean() < 6


def test_walk_ping_pongs_over_usable_frames_from_the_start_frame():
    usable = np.ones(6, bool)
    usable[3] = False  # a frame without a face is never walked
    t = build_timeline(usable, fps=Fraction(25), start_frame=4)
    assert t.slots.tolist() == [0, 1, 2, 4, 5]
    assert t.walk(0, 10).tolist() == [4, 5, 4, 2, 1, 0, 1, 2, 4, 5]
    # any slice of the walk equals the same frames of the whole walk (long tracks go batch by batch)
    assert t.walk(7, 3).tolist() == t.walk(0, 10)[7:].tolist()
    # 30 fps over 25 fps frames: a slot is walked when both dataset frames around its time are usable
    t30 = build_timeline(usable, fps=Fraction(30), slot_count=100, start_frame=0)
    u = t30.model_time(t30.slots)
    assert u.max() <= 5 and not np.any((u > 2) & (u < 4))
    assert build_timeline(np.ones(1, bool), fps=Fraction(25)).walk(0, 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"hello, this is not audio\n" * 20, "not_media"),
        (b"#EXTM3U\n#EXTINF:1,\nhttp://x/a.mp3\n", "unsafe_media"),
    ],
)
def test_bad_audio_is_refused_and_leaves_nothing(tiny_model, subject, settings, tmp_path, content, code):
    bad = tmp_path / "in" / "speech.mp3"
    bad.parent.mkdir()
    bad.write_bytes(content)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    renderer = Renderer(tiny_model, settings, dataset=subject.dataset)
    with pytest.raises(MediaError) as err:
        renderer.render(bad, out_dir / "dub.mp4")
    assert err.value.code == code
    assert list(out_dir.iterdir()) == []  # no video, no QC file, no work folder


def test_a_video_without_audio_is_refused(tiny_model, subject, settings, tmp_path):
    import subprocess

    from gpu_worker.media.binaries import ffmpeg_exe

    silent_video = tmp_path / "no_audio.mp4"
    lavfi = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1"]
    subprocess.run([ffmpeg_exe(), "-v", "error", *lavfi, "-c:v", "libx264", str(silent_video)], check=True)
    with pytest.raises(MediaError) as err:
        Renderer(tiny_model, settings, dataset=subject.dataset).render(silent_video, tmp_path / "o.mp4")
    assert err.value.code == "no_audio_stream"
    assert not (tmp_path / "o.mp4").exists()


def test_a_videos_audio_track_drives_the_render(tiny_model, subject, settings, tmp_path):
    result = Renderer(tiny_model, settings, dataset=subject.dataset).render(
        subject.source, tmp_path / "o.mp4", RenderOptions(mode="crop")
    )
    assert result.frames == round(probe(subject.source, settings).audio.duration_s * 25)


def test_silent_track_raises_the_silent_flag(tiny_model, subject, silent_wav, settings, tmp_path):
    result = Renderer(tiny_model, settings, dataset=subject.dataset).render(silent_wav, tmp_path / "s.mp4")
    assert "silent_audio" in result.qc["flags"] and "low_sync" not in result.qc["flags"]
    assert result.qc["mouth_envelope_corr"] is None
    on_disk = json.loads(qc_path_for(tmp_path / "s.mp4").read_text())
    assert on_disk["flags"] == result.qc["flags"] and on_disk["frames"] == result.frames


def test_model_without_torso_says_where_the_torso_comes_from(
    head_only_model, subject, speech_mp3, settings, tmp_path
):
    result = Renderer(head_only_model, settings, dataset=subject.dataset).render(
        speech_mp3, tmp_path / "h.mp4", RenderOptions(mode="crop")
    )
    assert result.qc["torso"] == "dataset" and any("torso" in n for n in result.qc["notes"])


def test_cli_renders_several_tracks_from_one_model_load(
    tiny_model, subject, speech_mp3, silent_wav, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    import gpu_worker.render.subject as subject_mod
    from services.cli.main import cli

    loads = []
    real = subject_mod.load_model
    monkeypatch.setattr(subject_mod, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    out = tmp_path / "videos"
    res = CliRunner().invoke(
        cli,
        ["render", str(tiny_model), "--audio", str(speech_mp3), "--audio", str(silent_wav), "--out", str(out),
         "--dataset", str(subject.dataset), "--mode", "fullframe"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(loads) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "silence.mp4",
        "silence.qc.json",
        "silence.srt",
        "silence.vtt",
        "speech.mp4",
        "speech.qc.json",
        "speech.srt",
        "speech.vtt",
    ]
    assert (out / "silence.vtt").read_text() == "WEBVTT\n"  # nothing said, nothing transcribed
    assert "silent_audio" in res.output


@pytest.mark.gpu
def test_render_on_the_gpu_matches_the_cpu(tiny_model, subject, speech_mp3, settings, tmp_path):
    """The stage on a CUDA device (the GPU worker's case): same frames as on the CPU, within the
    kernels' float tolerance and one H.264 generation."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    opts = RenderOptions(mode="crop", crf=0, qc=False)
    cpu = Renderer(tiny_model, settings, dataset=subject.dataset, device="cpu").render(
        speech_mp3, tmp_path / "c.mp4", opts
    )
    gpu = Renderer(tiny_model, settings, dataset=subject.dataset, device="cuda").render(
        speech_mp3, tmp_path / "g.mp4", opts
    )
    assert gpu.frames == cpu.frames
    with FrameReader(cpu.video, settings=settings) as a, FrameReader(gpu.video, settings=settings) as b:
        diffs = [np.abs(x.astype(np.float32) - y).mean() for x, y in zip(a, b, strict=True)]
    assert max(diffs) < 3.0, max(diffs)
