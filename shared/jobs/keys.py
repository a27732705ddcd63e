"""Where each job's files live in storage (docs/STORAGE.md): one prefix per tenant, then per resource.

Stages read their inputs from and write their outputs to these keys; a worker's disk is only a cache.
"""

from __future__ import annotations


def upload_key(tenant_id: str, upload_id: str) -> str:
    return f"tenants/{tenant_id}/uploads/{upload_id}"


def subject_prefix(tenant_id: str, subject_id: str) -> str:
    return f"tenants/{tenant_id}/subjects/{subject_id}"


def source_key(tenant_id: str, subject_id: str, suffix: str = ".mp4") -> str:
    """The subject's video as uploaded (its container's suffix kept: fullframe renders paste into it)."""
    return f"{subject_prefix(tenant_id, subject_id)}/source{suffix}"


def dataset_prefix(tenant_id: str, subject_id: str) -> str:
    return f"{subject_prefix(tenant_id, subject_id)}/dataset"


def model_prefix(tenant_id: str, subject_id: str) -> str:
    return f"{subject_prefix(tenant_id, subject_id)}/model"


def checkpoint_key(tenant_id: str, subject_id: str) -> str:
    """The training checkpoint, published as training goes so another worker can resume from it."""
    return f"{subject_prefix(tenant_id, subject_id)}/checkpoint/last.pt"


def render_prefix(tenant_id: str, render_id: str) -> str:
    return f"tenants/{tenant_id}/renders/{render_id}"


def video_key(tenant_id: str, render_id: str) -> str:
    return f"{render_prefix(tenant_id, render_id)}/video.mp4"


def qc_key(tenant_id: str, render_id: str) -> str:
    return f"{render_prefix(tenant_id, render_id)}/qc.json"


CAPTION_FORMATS = ("vtt", "srt")


def captions_key(tenant_id: str, render_id: str, fmt: str = "vtt") -> str:
    """A render's captions: ``captions.vtt`` (WebVTT) and ``captions.srt`` (SubRip) beside its video."""
    if fmt not in CAPTION_FORMATS:
        raise ValueError(f"captions come as {' or '.join(CAPTION_FORMATS)}, not {fmt!r}")
    return f"{render_prefix(tenant_id, render_id)}/captions.{fmt}"
