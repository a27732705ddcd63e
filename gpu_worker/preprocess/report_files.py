"""Where a subject's dashboard files live in storage: the dataset report's pictures and the training
curves. Pure names, no imports: the API reads these keys and must not load the media stack for it.

(These belong beside the other keys in shared/jobs/keys.py; they live here until that file's owner
takes them.)
"""

from __future__ import annotations

from shared.jobs.keys import subject_prefix

# name -> (content type, caption shown to people)
REPORT_IMAGES: dict[str, tuple[str, str]] = {
    "frames.jpg": ("image/jpeg", "Sample frames with the face landmarks found in them"),
    "masks.jpg": ("image/jpeg", "Face, neck and torso masks over the same frames"),
    "background.jpg": ("image/jpeg", "The background plate (the scene without the person)"),
    "coverage.png": ("image/png", "Face coverage over time: the share of usable frames in each second"),
}


def report_prefix(tenant_id: str, subject_id: str) -> str:
    return f"{subject_prefix(tenant_id, subject_id)}/report"


def report_image_key(tenant_id: str, subject_id: str, name: str) -> str:
    if name not in REPORT_IMAGES:
        raise ValueError(f"unknown report image {name!r}")
    return f"{report_prefix(tenant_id, subject_id)}/{name}"


def curves_key(tenant_id: str, subject_id: str) -> str:
    """The training curves, ``{"points": [{"stage", "step", "loss", "psnr"}], "total_steps"}``."""
    return f"{subject_prefix(tenant_id, subject_id)}/training/curves.json"
