"""Response headers of the dashboard's pages: a strict Content-Security-Policy (scripts and styles only
from this site, no inline code), no framing, no MIME sniffing, no referrer beyond this site.

Media and uploads may go to object storage on another origin (S3 presigned URLs): that origin is
allowed for ``media-src`` and ``connect-src`` only. The bucket must allow this site in its CORS
rules for the browser's PUT (docs/DASHBOARD.md).
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from shared.settings import Settings


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


@lru_cache(maxsize=8)
def _storage_origins(storage_url: str, endpoint: str | None, public_endpoint: str | None) -> str:
    if not storage_url.startswith("s3://"):
        return ""  # the local folder is served by this API (/storage/...): 'self'
    origin = _origin(public_endpoint) or _origin(endpoint)
    return f" {origin}" if origin else " https://*.amazonaws.com"


def page_headers(settings: Settings) -> dict[str, str]:
    storage = _storage_origins(
        settings.resolved_storage_url, settings.s3_endpoint_url, settings.s3_public_endpoint_url
    )
    csp = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"media-src 'self'{storage}; connect-src 'self'{storage}; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }
