"""Captions: Whisper's timed words of real speech -> readable cues -> WebVTT and SRT files, beside every
render (or drawn into it); the filter graph never sees a name it could misread."""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.media.binaries import ffmpeg_exe
from gpu_worker.speech import captions as cap
from gpu_worker.speech.captions import MAX_CUE_S, MAX_LINE_CHARS, Cue, Word, build_cues, to_srt, to_vtt
from shared.languages import WHISPER_LANGUAGES, check_language

SENTENCES = ["Hello there.", "My name is Bob, and I make pictures of people.", "Please be patient with me."]


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> Path:
    """Three sentences in the sample's piper voice with 0.8 s pauses, a 22.05 kHz mono WAV (~7.4 s)."""
    from gpu_worker.sample.speech import synthesize_sentences

    waves, rate, _ = synthesize_sentences(SENTENCES)
    gap = np.zeros(int(0.8 * rate), np.float32)
    audio = np.concatenate([np.concatenate([w, gap]) for w in waves])
    path = tmp_path_factory.mktemp("captions") / "spoken.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_the_language_list_is_whispers():
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert tuple(_LANGUAGE_CODES) == WHISPER_LANGUAGES
    assert check_language("EN") == "en" and check_language(None) is None and check_language("yue") == "yue"
    for bad in ("english", "en-US", "xx", "e"):
        with pytest.raises(ValueError):
            check_language(bad)


def _words(texts, start=0.0, step=0.3, gaps=None) -> list[Word]:
    out, t = [], start
    for i, text in enumerate(texts):
        t += (gaps or {}).get(i, 0.0)
        out.append(Word(round(t, 3), round(t + step * 0.9, 3), text))
        t += step
    return out


def test_cues_stay_readable_and_keep_every_word_in_order():
    rng = np.random.default_rng(0)
    vocab = ["a", "of", "the", "people", "pictures", "extraordinary", "x" * 50, "<b>", "&", "-->"]
    texts = [vocab[i] for i in rng.integers(0, len(vocab), 400)]
    gaps = {int(i): 1.0 for i in rng.integers(1, 400, 15)}
    cues = build_cues(_words(texts, gaps=gaps))
    for a, b in zip(cues, cues[1:], strict=False):
        assert a.end <= b.start  # never overlapping
    for cue in cues:
        assert 1 <= len(cue.lines) <= 2 and all(len(line) <= MAX_LINE_CHARS for line in cue.lines)
        assert cue.end - cue.start <= MAX_CUE_S + 1e-6
    joined = " ".join(" ".join(c.lines) for c in cues).replace("x" * 42 + " " + "x" * 8, "x" * 50)
    assert joined == " ".join(texts)


def test_cues_split_at_pauses_and_sentence_ends():
    words = _words(["Hello", "there.", "My", "name", "is", "Bob"], gaps={2: 0.7})
    assert [c.lines for c in build_cues(words)] == [["Hello there."], ["My name is Bob"]]
    # a sentence's end ends a cue once it lasted a second, not a one-word "Yes."
    words = _words(["Yes.", "I", "think", "so.", "And", "then"], step=0.4)
    assert [c.lines for c in build_cues(words)] == [["Yes. I think so."], ["And then"]]
    # two balanced lines rather than a full one and a stub
    words = _words(
        ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and", "runs", "far", "away"],
        step=0.2,
    )
    (cue,) = build_cues(words)
    assert cue.lines == ["the quick brown fox jumps over", "the lazy dog and runs far away"]
    # a short cue is held for a moment where the next one leaves room, never over it
    short = build_cues([Word(1.0, 1.2, "Hi."), Word(1.9, 2.0, "Yo")])
    assert short[0].end == pytest.approx(1.8) and short[0].end <= short[1].start


def test_writers_time_formats_and_escaping():
    cues = [Cue(3725.5, 3727.0014, ["a <b>bold</b> & more", "--> not a timing"]), Cue(0.0, 0.5, ["ok"])]
    vtt = to_vtt(cues)
    assert vtt.startswith("WEBVTT\n\n01:02:05.500 --> 01:02:07.001\n")
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; more\n--&gt; not a timing\n" in vtt
    assert vtt.count("-->") == 2  # the time lines only
    srt = to_srt(cues)
    z = cap.ZWSP  # SubRip has no entities: a zero-width space breaks tags and time lines
    assert srt.startswith(
        f"1\n01:02:05,500 --> 01:02:07,001\na <{z}b>bold<{z}/b> & more\n--{z}> not a timing\n"
    )
    assert "\n\n2\n00:00:00,000 --> 00:00:00,500\nok\n" in srt
    assert "<" not in vtt and "<b" not in srt and srt.count("-->") == 2
    assert to_vtt([]) == "WEBVTT\n" and to_srt([]) == ""


@pytest.mark.parametrize("fmt", ["vtt", "srt"])
def test_players_read_the_escaped_text_back(tmp_path, fmt):
    """What ffmpeg's WebVTT and SubRip readers (a player's) make of the escaped text: what was said."""
    cues = [Cue(0.0, 1.0, ["1 < 2 & 3 > 2 <b>x</b> --> ok"])]
    src = tmp_path / f"c.{fmt}"
    src.write_text(to_vtt(cues) if fmt == "vtt" else to_srt(cues))
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), str(tmp_path / "c.ass")], check=True)
    dialogue = [line for line in (tmp_path / "c.ass").read_text().splitlines() if line.startswith("Dialogue")]
    assert len(dialogue) == 1 and dialogue[0].replace(cap.ZWSP, "").endswith("1 < 2 & 3 > 2 <b>x</b> --> ok")


def test_filter_value_escapes_both_levels():
    assert cap.filter_value("file:/tmp/a") == "file\\\\:/tmp/a"
    assert cap.filter_value("/x/it's[1],a;b") == "/x/it\\\\\\'s\\[1\\]\\,a\\;b"


def test_burn_in_draws_the_captions_from_a_local_file_whatever_its_folder_is_called(
    tmp_path, settings, monkeypatch
):
    video = tmp_path / "in.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:size=160x120:rate=25:duration=2",
         "-f", "lavfi", "-i", "sine=duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
         "-shortest", str(video)],
        check=True,
    )  # fmt: skip
    vtt = tmp_path / "c.vtt"
    vtt.write_text(to_vtt([Cue(0.0, 2.0, ["HELLO WORLD"])]))
    odd = tmp_path / "it's [odd], a:b;c"  # every character the filter graph would misread
    odd.mkdir()
    monkeypatch.setattr(cap.tempfile, "mkdtemp", lambda prefix="": str(odd))
    out = tmp_path / "out.mp4"
    cap.burn_in(video, vtt, out, settings)
    assert not odd.exists()  # the temporary copy is gone

    def frame(path):
        raw = subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        return np.frombuffer(raw, np.uint8).reshape(120, 160).astype(int)

    diff = np.abs(frame(out) - frame(video))
    assert diff[80:].max() > 100 and diff[:40].max() < 20  # text at the bottom, nothing at the top
    probe = subprocess.run([ffmpeg_exe(), "-i", str(out)], capture_output=True, text=True).stderr
    assert "Audio: aac" in probe


def test_whisper_transcribes_real_speech_with_word_timings(spoken, settings):
    detected = cap.transcribe(spoken, settings)
    assert detected.language == "en" and detected.language_probability > 0.8
    text = " ".join(w.text for w in detected.words).lower()
    assert re.sub(r"[^a-z ]", "", text).split()[:4] == ["hello", "there", "my", "name"]
    starts = [w.start for w in detected.words]
    assert starts == sorted(starts) and all(w.end >= w.start for w in detected.words)
    assert detected.words[-1].end == pytest.approx(6.4, abs=0.7)  # the last word ends ~6.4 s in
    # the pause after "Hello there." starts a new cue
    assert detected.cues[0].lines == ["Hello there."] and len(detected.cues) >= 2
    given = cap.transcribe(spoken, settings, language="en")
    assert given.language == "en" and given.language_probability is None
    assert given.summary()["words"] == len(given.words) > 10


def test_cli_render_writes_captions_beside_the_video(tiny_model, base_dataset, spoken, tmp_path):
    from click.testing import CliRunner

    from services.cli.main import cli

    out = tmp_path / "o.mp4"
    args = [
        "render",
        str(tiny_model),
        "--audio",
        str(spoken),
        "--out",
        str(out),
        "--dataset",
        str(base_dataset),
    ]
    res = CliRunner().invoke(cli, [*args, "--mode", "crop"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4", "o.qc.json", "o.srt", "o.vtt"]
    assert "captions:" in res.output and "(en, detected with p" in res.output
    vtt = (tmp_path / "o.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n00:00:00.") and "Hello there." in vtt
    assert (tmp_path / "o.srt").read_text().startswith("1\n00:00:00,")
    qc = __import__("json").loads((tmp_path / "o.qc.json").read_text())
    assert qc["captions"]["language"] == "en" and qc["captions"]["words"] > 10

    quiet = tmp_path / "quiet"
    res = CliRunner().invoke(cli, [*args[:4], "--out", str(quiet / "q.mp4"), "--dataset", str(base_dataset),
                                   "--mode", "crop", "--no-captions", "--language", "en"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in quiet.iterdir()) == ["q.mp4", "q.qc.json"]
    res = CliRunner().invoke(cli, [*args, "--language", "klingon"])
    assert res.exit_code != 0 and "Whisper language code" in res.output


def test_burnt_captions_change_the_picture_and_nothing_else(
    tiny_model, base_dataset, spoken, settings, tmp_path
):
    from gpu_worker.media.frames import FrameReader
    from gpu_worker.render.options import RenderOptions
    from gpu_worker.render.stage import Renderer

    out = tmp_path / "out"
    with Renderer(tiny_model, settings, dataset=base_dataset) as renderer:
        plain = renderer.render(spoken, out / "plain.mp4", RenderOptions(mode="portrait", qc=False))
        burnt = renderer.render(
            spoken,
            out / "burnt.mp4",
            RenderOptions(mode="portrait", qc=False, captions="burn", language="en"),
        )
    assert burnt.frames == plain.frames and burnt.language == "en" and burnt.captions_vtt.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "burnt.mp4", "burnt.srt", "burnt.vtt", "plain.mp4", "plain.srt", "plain.vtt"
    ]  # fmt: skip

    def frames(path):
        with FrameReader(path, settings=settings) as reader:
            return np.stack([f for f in reader]).astype(int)

    a, b = frames(plain.video), frames(burnt.video)
    assert a.shape == b.shape
    assert np.abs(a - b).max() > 60  # the text is drawn


def test_a_long_track_is_transcribed_in_chunks_cut_in_its_pauses(spoken, settings, tmp_path, monkeypatch):
    """The render's 16 kHz decode is read a chunk at a time (flat memory on an hour of speech): the
    words come out as from one pass, at the right times."""
    pcm16 = tmp_path / "spoken16k.wav"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(spoken), "-ar", "16000", "-ac", "1", str(pcm16)],
                   check=True)  # fmt: skip
    whole = cap.transcribe(pcm16, settings, language="en")
    monkeypatch.setattr(cap, "CHUNK_S", 3.0)
    monkeypatch.setattr(cap, "CUT_SEARCH_S", 1.5)
    chunks = list(cap._chunks(pcm16))
    assert len(chunks) >= 3 and chunks[1][0] < 3.0  # cut before the chunk's end, in a quiet moment
    parts = cap.transcribe(pcm16, settings)
    assert parts.language == "en" and parts.language_probability > 0.5  # detected on the first chunk
    said = [re.sub(r"[^a-z]", "", w.text.lower()) for w in parts.words]
    assert said == [re.sub(r"[^a-z]", "", w.text.lower()) for w in whole.words]
    # the same times, but for the word that opens a chunk: Whisper may start it at the chunk's start,
    # in the pause before it (one word per CHUNK_S, 5 minutes, in a real render; docs/RENDER.md)
    ends = [abs(a.end - b.end) for a, b in zip(parts.words, whole.words, strict=True)]
    starts = [abs(a.start - b.start) for a, b in zip(parts.words, whole.words, strict=True)]
    assert max(ends) < 0.2 and sum(d > 0.3 for d in starts) <= len(chunks) - 1
