"""The sync QC tells a mouth that says the speech from one that does not, end to end on real frames:
the QC's own landmarker on a real face's frames, the speech's envelope, and Whisper's word timings.

The "good render" is the sample subject's clip with its own speech (its mouth follows that speech, as
a model's render that learnt the lips does: r 0.87-0.89 for the clips, 0.87-0.91 for the preview model,
docs/RENDER.md). The bad ones are what a render whose mouth is not driven by this speech looks like:
the clip's mouth with another track's speech (a render driven by another track's features), a mouth
that never moves (a render driven by all-zero features draws one mouth), and the speech shifted by
0.6 s. (The tiny model the other render tests train draws a sphere, where no landmarker finds a face,
and the tiny profile does not learn lips on a real face in test time: hence the real clip here.)
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_worker.media.frames import FrameReader
from gpu_worker.render.compose import resize
from gpu_worker.render.qc import THRESHOLDS, QualityChecks, sync_failures, word_checks
from gpu_worker.render.speech import open_speech
from gpu_worker.speech.captions import transcribe


@pytest.fixture(scope="module")
def measured(sample_subject, sample_subject_b, tmp_path_factory):
    """Per clip: the mouth opening per frame (the QC's landmarker), the speech track, its words."""
    from tests.conftest import isolated_settings

    root = tmp_path_factory.mktemp("sync_qc")
    settings = isolated_settings(root)
    out = {}
    for name, clip in (("a", sample_subject), ("b", sample_subject_b)):
        with QualityChecks(25.0, settings) as qc, FrameReader(clip.video, settings=settings) as reader:
            for frame in reader:
                qc.add_face(resize(frame, 256))
            qc.wait()
        track = open_speech(clip.speech, root / name, settings)
        words = [(w.start, w.end, w.text) for w in transcribe(track.wav_path, settings).words]
        out[name] = (np.asarray(qc.openings, np.float64), track, words)
    return out, settings


def _report(opening, track, words, settings, shift_frames: int = 0):
    qc = QualityChecks(25.0, settings)
    qc._tracker = object()  # the openings were measured by a landmarker (above)
    n = min(len(opening), track.n_frames(25))
    qc.openings = list(opening[:n])
    envelope = track.envelope(25, 0, n)
    if shift_frames:  # the speech later than the mouth
        envelope = np.concatenate([np.zeros(shift_frames), envelope[:-shift_frames]])
        words = [(a + shift_frames / 25, b + shift_frames / 25, t) for a, b, t in words]
    return qc.report(track, envelope, None, words=words)


def test_a_mouth_that_says_the_speech_passes_and_mismatches_are_flagged(measured):
    clips, settings = measured
    (open_a, track_a, words_a), (open_b, track_b, words_b) = clips["a"], clips["b"]
    assert len(words_a) >= THRESHOLDS["min_words"] and np.isfinite(open_a).mean() > 0.95

    good = _report(open_a, track_a, words_a, settings)
    assert good["flags"] == [] and good["sync_failures"] == []
    assert good["mouth_envelope_corr_best"] > 0.7
    assert good["sync_checks"]["still_word_share"] < 0.3

    other = _report(open_b, track_a, words_a, settings)  # the mouth of another track
    still = _report(np.full_like(open_a, np.nanmedian(open_a)), track_a, words_a, settings)  # zeros-like
    shifted = _report(open_a, track_a, words_a, settings, shift_frames=15)  # 0.6 s late
    for bad in (other, still, shifted):
        assert "low_sync" in bad["flags"] and "envelope" in bad["sync_failures"], bad["sync_failures"]
    assert "still_mouth" in still["sync_failures"]
    # the other way round too: b's own mouth passes, with a's speech it does not
    assert _report(open_b, track_b, words_b, settings)["flags"] == []
    swapped = _report(open_a, track_b, words_b, settings)
    assert "low_sync" in swapped["flags"]


def test_word_checks_read_silences_still_words_and_closures():
    fps = 25.0
    n = 150  # 6 s
    words = [
        (0.5, 0.9, "make"),
        (0.9, 1.4, "pictures"),
        (2.5, 2.9, "be"),
        (2.9, 3.5, "patient"),
        (4.5, 5.0, "now"),
    ]
    t = np.arange(n) / fps
    talking = np.zeros(n)
    for a, b, _ in words:
        inside = (t >= a) & (t < b)
        talking[inside] = 0.3 * np.sin(np.pi * (t[inside] - a) / (b - a))  # opens and closes per word
    good = word_checks(talking, fps, words)
    assert good["silence_open"] < 0.1 and good["word_open"] > 0.3 and good["still_word_share"] == 0.0
    assert good["mbp_words"] == 4 and good["mbp_closed_share"] == 1.0  # make, pictures, be, patient
    assert sync_failures(0.8, good) == []
    # open in the silences, shut during the words: the inverse of speech
    inverse = word_checks(0.3 - talking, fps, words)
    assert inverse["silence_open"] > 0.8 and "open_in_silence" in sync_failures(0.8, inverse)
    # a mouth that does not move
    still = word_checks(np.full(n, 0.1), fps, words)
    assert still["mouth_range"] == 0.0 and "still_mouth" in sync_failures(0.8, still)
    # no words (Whisper heard none): only the envelope and the range are judged
    assert word_checks(talking, fps, [])["silence_open"] is None
