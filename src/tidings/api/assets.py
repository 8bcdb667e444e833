"""The browser's files: ``/tidings.js``, its types, and the pages' static files, answered with
CORS for the allowed origins (the module is public: a page on the application's own site
imports it from a separate tidings service) and with caching a browser can trust.

``/tidings.js`` is revalidated on every use (``no-cache`` with an ETag of its content, the same
on every node); ``/tidings.<hash>.js``, named by its ``Content-Location``, is the same file
cached for good (``immutable``): a page that pins it never asks again until tidings changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

#: how long a browser keeps a pinned (hashed) file: a year, the longest caches honour
IMMUTABLE = "public, max-age=31536000, immutable"


def cors_headers(origin: str | None, allowed: Sequence[str] | None) -> dict[str, str]:
    """The CORS headers of a public file for a request from ``origin``: any origin when
    ``TIDINGS_ALLOWED_ORIGINS`` is unset or ``*``, else only the listed ones."""
    if allowed is None or "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    headers = {"Vary": "Origin"}
    if origin is not None and origin in allowed:
        headers["Access-Control-Allow-Origin"] = origin
    return headers


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


class Asset:
    """A file of ``web/``, read once: its bytes and an ETag of its content."""

    def __init__(self, path: Path, media_type: str) -> None:
        self.body = path.read_bytes()
        self.media_type = media_type
        self.digest = hashlib.sha256(self.body).hexdigest()[:16]
        self.etag = f'"{self.digest}"'

    def response(
        self,
        request: Request,
        allowed: Sequence[str] | None,
        *,
        immutable: bool = False,
        location: str | None = None,
    ) -> Response:
        """The file, or ``304`` when the browser holds this content already."""
        headers = cors_headers(request.headers.get("origin"), allowed)
        headers["ETag"] = self.etag
        headers["Cache-Control"] = IMMUTABLE if immutable else "no-cache"
        if location is not None:
            headers["Content-Location"] = location
        if _matches(request.headers.get("if-none-match"), self.etag):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


class WebFiles(StaticFiles):
    """``/static``: the pages' files, with the same CORS, revalidated (``no-cache``) with
    Starlette's ETags."""

    def __init__(self, directory: Path, allowed: Sequence[str] | None) -> None:
        super().__init__(directory=directory)
        self.allowed = allowed

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        origin = Request(scope).headers.get("origin")
        response.headers.update(cors_headers(origin, self.allowed))
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = "no-cache"
        return response
