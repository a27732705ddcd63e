"""A probe for plain PCM WAV files from their header alone: the fast path for speech tracks.

A bulk dub uploads thousands of short tracks, and each is checked before anything is queued. Most are
WAV, and a PCM (or float) WAV is completely described by its header: the ``fmt `` chunk gives the
sample format, the ``data`` chunk's size the duration, and any bytes in the data section are valid
samples (there is nothing to decode that could be malformed). So reading the first bytes of the stored
file and its size gives the same verdict as running ffprobe on all of it, without the download or the
subprocess.

Only the plain case is taken: anything unusual (RF64, compressed formats, a header longer than the
bytes given, a data chunk that runs past the end of the file or is empty, odd block sizes) answers
``None`` and the full probe decides. The fast path never accepts a file the full probe would refuse;
tests/media/test_probe_wav.py checks the two agree.
"""

from __future__ import annotations

import struct

from gpu_worker.media.info import AudioStreamInfo, MediaInfo

HEAD_BYTES = 64 * 1024  # what callers read: WAV headers are tens of bytes (a few KB with metadata)
MAX_CHANNELS = 8
RATES = (8_000, 384_000)  # sample rates taken on the fast path (the full probe decides others)

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
# ffmpeg's codec names, by (format tag, bits per sample)
_CODECS = {
    (_PCM, 8): "pcm_u8",
    (_PCM, 16): "pcm_s16le",
    (_PCM, 24): "pcm_s24le",
    (_PCM, 32): "pcm_s32le",
    (_FLOAT, 32): "pcm_f32le",
    (_FLOAT, 64): "pcm_f64le",
}
# WAVE_FORMAT_EXTENSIBLE's sub-format GUIDs end with this (the format tag is in their first 2 bytes)
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def probe_wav_header(head: bytes, size: int, shown: str) -> MediaInfo | None:
    """What the full probe would say of a WAV file whose first bytes are ``head`` and whose whole size
    is ``size``; ``None`` when the file is not a plain PCM/float WAV this can vouch for."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(head):
        chunk_id, chunk_size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if fmt is not None or chunk_size < 16 or body + chunk_size > len(head):
                return None
            fmt = _format(head[body : body + chunk_size])
            if fmt is None:
                return None
        elif chunk_id == b"data":
            if fmt is None or chunk_size == 0 or body + chunk_size > size:
                return None  # no format yet, nothing to play, or cut short: the full probe judges
            return _info(fmt, chunk_size, size, shown)
        pos = body + chunk_size + (chunk_size & 1)  # chunks are padded to an even length
    return None  # the data chunk lies beyond the bytes given


def _format(fmt: bytes) -> tuple[int, int, int, int, int] | None:
    """(format tag, channels, sample rate, block align, bits per sample) when plain PCM or float."""
    tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE:
        if len(fmt) < 40 or fmt[26:40] != _GUID_TAIL:
            return None
        valid_bits = struct.unpack_from("<H", fmt, 18)[0]
        if valid_bits not in (0, bits):
            return None  # e.g. 20 bits in 24-bit slots: ffmpeg names it differently
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if (tag, bits) not in _CODECS or not 1 <= channels <= MAX_CHANNELS:
        return None
    if not RATES[0] <= rate <= RATES[1]:
        return None
    if block_align != channels * bits // 8 or byte_rate != rate * block_align:
        return None
    return tag, channels, rate, block_align, bits


def _info(fmt: tuple[int, int, int, int, int], data_bytes: int, size: int, shown: str) -> MediaInfo | None:
    tag, channels, rate, block_align, bits = fmt
    if data_bytes % block_align:
        return None  # a partial sample frame at the end: leave it to the full probe
    duration = data_bytes // block_align / rate
    audio = AudioStreamInfo(
        codec=_CODECS[(tag, bits)], sample_rate=rate, channels=channels, duration_s=duration
    )
    return MediaInfo(
        path=shown,
        format_name="wav",
        size_bytes=size,
        duration_s=round(duration, 6),  # as ffmpeg reports a container's duration (microseconds)
        video=None,
        audio=audio,
        backend="wav-header",
    )
