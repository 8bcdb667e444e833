"""The :class:`~tidings.delivery.stores.base.TemplateStore` facet of the pipeline on
PostgreSQL."""

from __future__ import annotations

from typing import Any

from tidings.core.models import utcnow
from tidings.delivery.models import Content, Template
from tidings.delivery.stores.base import TemplateStore
from tidings.delivery.stores.postgres.common import PostgresTables
from tidings.delivery.stores.rows import TEMPLATE_COLUMNS, native, template_of, with_translations


class PostgresTemplates(PostgresTables, TemplateStore):
    """Templates and their translations on PostgreSQL."""

    async def put_template(
        self, template_id: str, content: Content, locale: str = "en"
    ) -> tuple[Template, bool]:
        async with self.store.connection(transaction=True) as conn:
            version = await conn.fetchval(
                f"INSERT INTO pipeline_templates AS t ({TEMPLATE_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, 1, $5, $5, $6) "
                "ON CONFLICT (template_id) DO UPDATE SET subject = excluded.subject, "
                "text = excluded.text, html = excluded.html, version = t.version + 1, "
                "updated_at = excluded.updated_at, locale = excluded.locale RETURNING version",
                template_id,
                content.subject,
                content.text,
                content.html,
                utcnow(),
                locale,
            )
            [template] = await _templates(conn, template_id)
        return template, version == 1

    async def put_translation(
        self, template_id: str, locale: str, content: Content
    ) -> Template | None:
        now = utcnow()
        async with self.store.connection(transaction=True) as conn:
            if not await conn.fetchval(
                "UPDATE pipeline_templates SET version = version + 1, updated_at = $2 "
                "WHERE template_id = $1 RETURNING true",
                template_id,
                now,
            ):
                return None
            await conn.execute(
                "INSERT INTO pipeline_template_locales VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (template_id, locale) DO UPDATE SET subject = excluded.subject, "
                "text = excluded.text, html = excluded.html, updated_at = excluded.updated_at",
                template_id,
                locale,
                content.subject,
                content.text,
                content.html,
                now,
            )
            return (await _templates(conn, template_id))[0]

    async def delete_translation(self, template_id: str, locale: str) -> bool:
        async with self.store.connection(transaction=True) as conn:
            status = await conn.execute(
                "DELETE FROM pipeline_template_locales WHERE template_id = $1 AND locale = $2",
                template_id,
                locale,
            )
            if status == "DELETE 0":
                return False
            await conn.execute(
                "UPDATE pipeline_templates SET version = version + 1, updated_at = $2 "
                "WHERE template_id = $1",
                template_id,
                utcnow(),
            )
        return True

    async def get_template(self, template_id: str) -> Template | None:
        async with self.store.connection() as conn:
            found = await _templates(conn, template_id)
        return found[0] if found else None

    async def list_templates(self) -> list[Template]:
        async with self.store.connection() as conn:
            return await _templates(conn, None)

    async def delete_template(self, template_id: str) -> bool:
        async with self.store.connection() as conn:
            # (its translations go with it: ON DELETE CASCADE)
            status = await conn.execute(
                "DELETE FROM pipeline_templates WHERE template_id = $1", template_id
            )
        return bool(status != "DELETE 0")


async def _templates(conn: Any, template_id: str | None) -> list[Template]:
    """The template ``template_id``, or every template (``None``) by id, with translations."""
    rows = await conn.fetch(
        f"SELECT {TEMPLATE_COLUMNS} FROM pipeline_templates "
        "WHERE $1::text IS NULL OR template_id = $1 ORDER BY template_id",
        template_id,
    )
    translations = await conn.fetch(
        "SELECT template_id, locale, subject, text, html FROM pipeline_template_locales "
        "WHERE $1::text IS NULL OR template_id = $1 ORDER BY template_id, locale",
        template_id,
    )
    return with_translations([template_of(row, native) for row in rows], translations)
