"""The language codes Whisper knows (the ``language`` of a render and of ``synctalk render``).

A copy of faster-whisper's list (``faster_whisper.tokenizer._LANGUAGE_CODES``), so the API can check a
request without loading the speech stack; tests/render/test_captions.py keeps the two equal.
"""

from __future__ import annotations

WHISPER_LANGUAGES: tuple[str, ...] = (
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da", "de",
    "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw", "he", "hi", "hr", "ht",
    "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn", "ko", "la", "lb", "ln", "lo", "lt",
    "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl", "nn", "no", "oc", "pa", "pl",
    "ps", "pt", "ro", "ru", "sa", "sd", "si", "sk", "sl", "sn", "so", "sq", "sr", "su", "sv", "sw", "ta",
    "te", "tg", "th", "tk", "tl", "tr", "tt", "uk", "ur", "uz", "vi", "yi", "yo", "zh", "yue",
)  # fmt: skip
CAPTION_MODES = ("on", "off", "burn")


def check_language(code: str | None) -> str | None:
    """``code`` lower-cased when Whisper knows it (None: detect it); ValueError otherwise."""
    if code is None or code == "":
        return None
    low = code.strip().lower()
    if low not in WHISPER_LANGUAGES:
        raise ValueError(f"language must be a Whisper language code (e.g. en, de, fr, ja, yue), got {code!r}")
    return low
