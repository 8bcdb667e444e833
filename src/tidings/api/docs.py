"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served from files installed with tidings.

FastAPI's own pages load Swagger UI, ReDoc, Google Fonts and a favicon from other hosts, so
they are blank pages on a network without internet. These pages load only files of this node:
swagger-ui-dist's ``swagger-ui-bundle.js`` and ``swagger-ui.css`` and ReDoc's
``redoc.standalone.js``, as the ``fastapi-offline`` package ships them (a dependency: it
follows both projects' releases, so tidings copies none of their files). ReDoc's bundle is
served with the URL of its menu logo on Redocly's CDN replaced (:data:`PATCHES`).

The files are read once per process and answered under ``/docs/assets/<digest>/``, a name of
their content: cached for good (``immutable``), a new install of other files gets a new URL.
The pages themselves are generated on each request, with the ``root_path`` a proxy sets.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)

from tidings.api.assets import IMMUTABLE
from tidings.errors import ApiError

#: the installed package whose ``static/`` folder holds the files
ASSETS_PACKAGE = "fastapi_offline"
#: the files the two pages load, with their media types
FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
#: the one file another host is asked for, ReDoc's menu logo: with an image that cannot load
#: (the logo is left out, as when its CDN does not answer), the page asks no other host
PATCHES = {
    "redoc.standalone.js": (b'"https://cdn.redoc.ly/redoc/logo-mini.svg"', b'"data:,"'),
}
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


@dataclass(frozen=True, slots=True)
class DocFile:
    body: bytes
    media_type: str
    etag: str


@functools.cache
def doc_files() -> tuple[str, dict[str, DocFile]]:
    """The files by name and a digest of them all, read once per process."""
    folder = resources.files(ASSETS_PACKAGE) / "static"
    files: dict[str, DocFile] = {}
    whole = hashlib.sha256()
    for name, media_type in FILES.items():
        body = (folder / name).read_bytes()
        if name in PATCHES:
            body = body.replace(*PATCHES[name])
        digest = hashlib.sha256(body).hexdigest()[:16]
        whole.update(f"{name}:{digest}\n".encode())
        files[name] = DocFile(body, media_type, f'"{digest}"')
    return whole.hexdigest()[:16], files


def mount_docs(app: FastAPI) -> None:
    """Add ``/docs``, its OAuth2 redirect page, ``/redoc`` and their files to ``app`` (made
    with ``docs_url=None, redoc_url=None``); ``/openapi.json`` stays FastAPI's."""
    digest, files = doc_files()
    assets = f"{DOCS_URL}/assets/{digest}"
    openapi_url = app.openapi_url or "/openapi.json"

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger_ui(request: Request) -> Response:
        """Swagger UI: every operation, with "Try it out" against this node."""
        prefix = root(request)
        return get_swagger_ui_html(
            openapi_url=prefix + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{prefix}{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}{assets}/favicon.png",
            oauth2_redirect_url=prefix + OAUTH2_REDIRECT_URL,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def swagger_ui_redirect(_: Request) -> Response:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> Response:
        """ReDoc: the same document as one long page, in the browser's own fonts."""
        prefix = root(request)
        return get_redoc_html(
            openapi_url=prefix + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{prefix}{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{prefix}{assets}/favicon.png",
            with_google_fonts=False,
        )

    async def doc_file(request: Request) -> Response:
        """One of the pages' files, cached for good under this name of its content."""
        file = files.get(request.path_params["name"])
        if file is None:
            raise ApiError(404, "not_found", "no such file")
        headers = {"Cache-Control": IMMUTABLE, "ETag": file.etag}
        if file.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(file.body, media_type=file.media_type, headers=headers)

    # Plain routes, as FastAPI adds its own pages: GET and HEAD, outside the OpenAPI document.
    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT_URL, swagger_ui_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)
    app.add_route(assets + "/{name}", doc_file, include_in_schema=False)
