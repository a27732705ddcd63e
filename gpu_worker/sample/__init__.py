"""The sample subject: a talking clip of a real photo with known head pose, mouth opening and blinks.

It is the demo and test data of the whole project: ``make_sample(out_dir)`` writes subject.mp4
(H.264 + AAC, 25 fps), speech.wav (the TTS's own rate) and truth.json (see docs/SAMPLE.md).
"""

from gpu_worker.sample.generate import SampleResult, make_sample

__all__ = ["SampleResult", "make_sample"]
