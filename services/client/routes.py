"""Every single-request route of the v1 contract, written once for the sync and the async client.

A method builds a ``Call`` (what to send, how to read the answer) and hands it to ``self._run``: the sync
client returns the result, the async client an awaitable of it. Transfers that need more than one
request (uploads, downloads, waiting, the event stream) live in ``sync.py`` / ``aio.py``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from services.client.config import content_type_of
from services.client.types import Batch, BatchItem, Page, Render, Subject, Upload, UploadList, Webhook


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    # multipart: called once per attempt, so a retry sends the file again from its start
    files: Callable[[], list[tuple[str, tuple[str, Any, str]]]] | None = None
    data: dict[str, str] | None = None
    idempotency_key: str | None = None
    expect: Literal["json", "none", "text"] = "json"
    # statuses >= 400 that are answers for this route, returned as they are (never retried or raised)
    answers: frozenset[int] = frozenset()


def _params(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _file_part(field_name: str, path: Path) -> Callable[[], list[tuple[str, tuple[str, Any, str]]]]:
    def parts() -> list[tuple[str, tuple[str, Any, str]]]:
        return [(field_name, (path.name, open(path, "rb"), content_type_of(path.name)))]  # noqa: SIM115 - closed by the sender

    return parts


class Routes:
    """The typed methods. In ``AsyncClient`` each returns an awaitable of the type written here."""

    def _run(self, call: Call) -> Any:  # pragma: no cover - provided by the clients
        raise NotImplementedError

    # --- subjects
    def create_subject(
        self, *, upload_id: str | None = None, video: str | Path | None = None, name: str | None = None,
        profile: str | None = None, idempotency_key: str | None = None,
    ) -> Subject:  # fmt: skip
        """From a finished upload (``upload_id``) or a small file sent as multipart (``video``);
        ``upload_subject`` streams any file through a presigned upload instead."""
        if (upload_id is None) == (video is None):
            raise ValueError("give exactly one of upload_id or video")
        fields = _params(name=name, profile=profile)
        if video is not None:
            return self._run(Call("POST", "/v1/subjects", files=_file_part("video", Path(video)), data=fields,
                                  idempotency_key=idempotency_key))  # fmt: skip
        return self._run(
            Call(
                "POST",
                "/v1/subjects",
                json={"upload_id": upload_id, **fields},
                idempotency_key=idempotency_key,
            )
        )

    def get_subject(self, subject_id: str) -> Subject:
        return self._run(Call("GET", f"/v1/subjects/{subject_id}"))

    def list_subjects(
        self, *, limit: int | None = None, cursor: str | None = None, status: str | None = None
    ) -> Page:
        return self._run(
            Call("GET", "/v1/subjects", params=_params(limit=limit, cursor=cursor, status=status))
        )

    def cancel_subject(self, subject_id: str, *, idempotency_key: str | None = None) -> Subject:
        return self._run(Call("POST", f"/v1/subjects/{subject_id}/cancel", idempotency_key=idempotency_key))

    def delete_subject(self, subject_id: str) -> None:
        return self._run(Call("DELETE", f"/v1/subjects/{subject_id}", expect="none"))

    # --- renders
    def create_render(
        self, subject_id: str, *, upload_id: str | None = None, audio: str | Path | None = None,
        mode: str | None = None, start_frame: int | None = None, ref: str | None = None,
        idempotency_key: str | None = None, language: str | None = None, captions: str | None = None,
    ) -> Render:  # fmt: skip
        if (upload_id is None) == (audio is None):
            raise ValueError("give exactly one of upload_id or audio")
        fields = _params(mode=mode, start_frame=start_frame, ref=ref, language=language, captions=captions)
        path = f"/v1/subjects/{subject_id}/renders"
        if audio is not None:
            data = {k: str(v) for k, v in fields.items()}
            return self._run(Call("POST", path, files=_file_part("audio", Path(audio)), data=data,
                                  idempotency_key=idempotency_key))  # fmt: skip
        return self._run(
            Call("POST", path, json={"upload_id": upload_id, **fields}, idempotency_key=idempotency_key)
        )

    def get_render(self, render_id: str) -> Render:
        return self._run(Call("GET", f"/v1/renders/{render_id}"))

    def list_renders(
        self, *, limit: int | None = None, cursor: str | None = None, status: str | None = None,
        subject_id: str | None = None, batch_id: str | None = None,
    ) -> Page:  # fmt: skip
        params = _params(limit=limit, cursor=cursor, status=status, subject_id=subject_id, batch_id=batch_id)
        return self._run(Call("GET", "/v1/renders", params=params))

    def cancel_render(self, render_id: str, *, idempotency_key: str | None = None) -> Render:
        return self._run(Call("POST", f"/v1/renders/{render_id}/cancel", idempotency_key=idempotency_key))

    # --- batches
    def create_batch(
        self, subject_id: str, items: list[BatchItem], *, idempotency_key: str | None = None
    ) -> Batch:
        """Up to 1000 renders in one transaction; the answer lists ``{"id", "ref"}`` in the items' order."""
        body = {"subject_id": subject_id, "items": items}
        return self._run(Call("POST", "/v1/batches", json=body, idempotency_key=idempotency_key))

    def get_batch(self, batch_id: str) -> Batch:
        return self._run(Call("GET", f"/v1/batches/{batch_id}"))

    # --- uploads
    def create_upload(
        self, filename: str, content_type: str, size: int, *, idempotency_key: str | None = None
    ) -> Upload:
        body = {"filename": filename, "content_type": content_type, "bytes": size}
        return self._run(Call("POST", "/v1/uploads", json=body, idempotency_key=idempotency_key))

    def create_uploads(
        self, files: list[tuple[str, str, int]], *, idempotency_key: str | None = None
    ) -> UploadList:
        """Up to 1000 uploads in one call, from (filename, content_type, size) each; ``data`` lists them
        in that order. Servers without the route answer 404 (``NotFound``): fall back to ``create_upload``."""
        items = [{"filename": name, "content_type": ctype, "bytes": size} for name, ctype, size in files]
        return self._run(
            Call("POST", "/v1/uploads/batch", json={"items": items}, idempotency_key=idempotency_key)
        )

    def upload_files(
        self, files: list[tuple[str, bytes, str]], *, idempotency_key: str | None = None
    ) -> UploadList:
        """Small files sent in the call itself, (filename, content, content_type) each: at most 1000, 16 MB
        each and 64 MB in all. ``data`` lists the uploads, already received, in that order. Servers without
        the route answer 404 or 405: use ``create_uploads`` and ``put_file`` there."""

        def parts() -> list[tuple[str, tuple[str, Any, str]]]:
            return [("file", (name, io.BytesIO(data), ctype)) for name, data, ctype in files]

        return self._run(Call("POST", "/v1/uploads/files", files=parts, idempotency_key=idempotency_key))

    def get_upload(self, upload_id: str) -> Upload:
        return self._run(Call("GET", f"/v1/uploads/{upload_id}"))

    # --- webhooks
    def create_webhook(self, url: str, events: list[str], *, idempotency_key: str | None = None) -> Webhook:
        """The answer holds the signing ``secret``: it is shown only here."""
        return self._run(Call("POST", "/v1/webhooks", json={"url": url, "events": events},
                              idempotency_key=idempotency_key))  # fmt: skip

    def list_webhooks(self, *, limit: int | None = None, cursor: str | None = None) -> Page:
        return self._run(Call("GET", "/v1/webhooks", params=_params(limit=limit, cursor=cursor)))

    def get_webhook(self, webhook_id: str) -> Webhook:
        return self._run(Call("GET", f"/v1/webhooks/{webhook_id}"))

    def delete_webhook(self, webhook_id: str) -> None:
        return self._run(Call("DELETE", f"/v1/webhooks/{webhook_id}", expect="none"))

    # --- operations (no key needed)
    def health(self) -> dict[str, Any]:
        return self._run(Call("GET", "/healthz"))

    def ready(self) -> dict[str, Any]:
        """``{"status": "ready"|"unavailable", "checks": {...}}``: a 503 is an answer here, not an error."""
        return self._run(Call("GET", "/readyz", answers=frozenset({503})))

    def metrics(self) -> str:
        return self._run(Call("GET", "/metrics", expect="text"))
