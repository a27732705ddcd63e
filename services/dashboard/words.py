"""What the dashboard says to people about error codes, QC flags and report figures: plain words and
what to do. Codes not listed get a general line (the API's own message is always shown too)."""

from __future__ import annotations

ADVICE: dict[str, str] = {
    "no_face": "No face was found in enough frames. Upload a video where one person faces the camera, "
    "well lit, with the whole face in view.",
    "unusable_frames": "Too few frames showed the face clearly. Use a steadier shot with the face fully "
    "visible, no hands or objects in front of it.",
    "clip_too_short": "The video is too short to learn the person. Upload a longer clip of them talking.",
    "no_video_stream": "The file has no picture. Upload the video file itself, not only its sound.",
    "no_audio_stream": "The file has no sound. Upload a file with the person's speech in it.",
    "silent_audio": "The sound is silent or almost so. Check the recording and upload it again.",
    "not_media": "This is not a video or audio file we can read. Export it as MP4 (H.264 + AAC) and retry.",
    "unsafe_media": "The file refers to other files or addresses (a playlist or script). Upload a plain "
    "media file.",
    "unsupported_media": "Only video and audio files are accepted. Export the file as MP4, WAV or MP3.",
    "media_decode": "The file could not be decoded; it may be damaged. Export it again and retry.",
    "truncated": "The file ends early (an interrupted copy or upload). Upload it again.",
    "empty_file": "The file is empty. Pick the right file and upload it again.",
    "media_too_large": "The file is over the size limit. Trim or compress it, then upload it again.",
    "file_too_large": "The file is over the size limit. Trim or compress it, then upload it again.",
    "media_timeout": "Reading the file took too long. Re-encode it (MP4, H.264 + AAC) and retry.",
    "stage_timeout": "A stage ran past its time limit. Try a shorter clip or a lighter profile; if it "
    "happens again, contact support with the subject's id.",
    "worker_lost": "The machine doing the work stopped several times. Retry later; if it happens again, "
    "contact support with the id.",
    "training_failed": "Training did not converge on this video. Try another clip of the person (steady, "
    "well lit, talking).",
    "dataset_invalid": "The prepared data of this subject is damaged. Upload the video again as a new subject.",
    "render_failed": "This render failed. Retry it; if it fails again, try another speech file.",
    "internal_error": "Something went wrong on our side. Retry; if it happens again, contact support "
    "with the id.",
    "canceled": "It was canceled. Retry to run it again.",
}
GENERAL_ADVICE = (
    "Check the message above; retry, or upload another file. Contact support with the id if it persists."
)

QC_FLAGS: dict[str, str] = {
    "no_face_frames": "In some frames of the result no face could be found: check the start of the video "
    "and any fast head turns.",
    "low_sync": "The mouth movements follow the speech only weakly: listen and watch before using it; a "
    "clearer speech recording usually helps.",
    "silent_audio": "The speech track is silent or almost so: the mouth barely moves.",
    "clipped_audio": "The speech track is clipped (too loud, distorted): lip sync may suffer; lower its "
    "level and retry.",
}

REPORT_WARNING_INTRO = "Things to know about this video:"


def advice(code: str | None) -> str:
    return ADVICE.get(code or "", GENERAL_ADVICE)
