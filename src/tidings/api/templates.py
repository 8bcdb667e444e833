"""HTTP routes of templates and their translations (docs/pipeline.md, "Templates",
"Locales"): services with scope ``messages``.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, which name
# dependencies local to the functions that mount them.
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.common import RequireScope, pipeline_call
from tidings.api.ports import ApiNode
from tidings.core.limits import MAX_TEMPLATE_ID_LENGTH
from tidings.delivery.locales import DEFAULT_LOCALE, MAX_LOCALE_LENGTH
from tidings.delivery.models import Content
from tidings.errors import ApiError

TemplateId = Annotated[
    str, Path(min_length=1, max_length=MAX_TEMPLATE_ID_LENGTH, pattern=r"^[^\x00-\x1f]+$")
]
LocalePath = Annotated[str, Path(min_length=1, max_length=MAX_LOCALE_LENGTH)]


class ContentIn(BaseModel):
    """Jinja sources of a message's parts (rendered in the sandbox with the message's data)."""

    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(None, max_length=1000)
    text: str = Field(min_length=1, max_length=100_000)
    html: str | None = Field(None, max_length=500_000)

    def content(self) -> Content:
        return Content(self.text, self.subject, self.html)


class TemplateIn(ContentIn):
    """A template's content, and the locale it is written in."""

    locale: str = Field(
        DEFAULT_LOCALE,
        min_length=1,
        max_length=MAX_LOCALE_LENGTH,
        description="The locale the content is written in (dates and numbers follow it).",
    )


def mount_templates(
    router: APIRouter,
    tidings: ApiNode,
    require_scope: RequireScope,
    errors: dict[int | str, dict[str, Any]],
    not_found: dict[int | str, dict[str, Any]],
) -> None:
    scoped = [Depends(require_scope("messages"))]

    @router.put(
        "/templates/{template_id}",
        responses={201: {"description": "Created"}, **errors},
        tags=["templates"],
        dependencies=scoped,
    )
    async def put_template(template_id: TemplateId, body: TemplateIn) -> JSONResponse:
        """Create or replace a template's content (written in ``locale``, ``en`` by default;
        its translations stay); every node's cache drops its old version."""
        template, created = await pipeline_call(
            tidings.pipeline.put_template(template_id, body.content(), body.locale)
        )
        return JSONResponse(template.to_dict(), 201 if created else 200)

    @router.put(
        "/templates/{template_id}/translations/{locale}",
        responses={**errors, **not_found},
        tags=["templates"],
        dependencies=scoped,
    )
    async def put_translation(
        template_id: TemplateId, locale: LocalePath, body: ContentIn
    ) -> JSONResponse:
        """Create or replace the template's content in ``locale`` (``fr``, ``fr-CA``): users
        in that locale, or in a more specific one it falls back to, get it. ``422`` names an
        unknown locale."""
        template = await pipeline_call(
            tidings.pipeline.put_translation(template_id, locale, body.content())
        )
        if template is None:
            raise ApiError(404, "not_found", f"no template {template_id!r}")
        return JSONResponse(template.to_dict())

    @router.delete(
        "/templates/{template_id}/translations/{locale}",
        status_code=204,
        responses={**errors, **not_found},
        tags=["templates"],
        dependencies=scoped,
    )
    async def delete_translation(template_id: TemplateId, locale: LocalePath) -> Response:
        if not await pipeline_call(tidings.pipeline.delete_translation(template_id, locale)):
            raise ApiError(404, "not_found", f"no {locale!r} translation of {template_id!r}")
        return Response(status_code=204)

    @router.get(
        "/templates/{template_id}",
        responses={**errors, **not_found},
        tags=["templates"],
        dependencies=scoped,
    )
    async def get_template(template_id: TemplateId) -> JSONResponse:
        template = await tidings.pipeline.store.get_template(template_id)
        if template is None:
            raise ApiError(404, "not_found", f"no template {template_id!r}")
        return JSONResponse(template.to_dict())

    @router.get("/templates", responses=errors, tags=["templates"], dependencies=scoped)
    async def list_templates() -> JSONResponse:
        templates = await tidings.pipeline.store.list_templates()
        return JSONResponse([t.to_dict() for t in templates])

    @router.delete(
        "/templates/{template_id}",
        status_code=204,
        responses={**errors, **not_found},
        tags=["templates"],
        dependencies=scoped,
    )
    async def delete_template(template_id: TemplateId) -> Response:
        if not await tidings.pipeline.delete_template(template_id):
            raise ApiError(404, "not_found", f"no template {template_id!r}")
        return Response(status_code=204)
