"""The :class:`~tidings.delivery.stores.base.TemplateStore` facet of the pipeline on
PostgreSQL."""

from __future__ import annotations

from tidings.core.models import utcnow
from tidings.delivery.models import Content, Template
from tidings.delivery.stores.base import TemplateStore
from tidings.delivery.stores.postgres.common import PostgresTables
from tidings.delivery.stores.rows import TEMPLATE_COLUMNS, native, template_of


class PostgresTemplates(PostgresTables, TemplateStore):
    """Templates on PostgreSQL."""

    async def put_template(self, template_id: str, content: Content) -> tuple[Template, bool]:
        async with self.store.connection() as conn:
            row = await conn.fetchrow(
                f"INSERT INTO pipeline_templates AS t VALUES ($1, $2, $3, $4, 1, $5, $5) "
                "ON CONFLICT (template_id) DO UPDATE SET subject = excluded.subject, "
                "text = excluded.text, html = excluded.html, version = t.version + 1, "
                f"updated_at = excluded.updated_at RETURNING {TEMPLATE_COLUMNS}",
                template_id,
                content.subject,
                content.text,
                content.html,
                utcnow(),
            )
        template = template_of(row, native)
        return template, template.version == 1

    async def get_template(self, template_id: str) -> Template | None:
        async with self.store.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {TEMPLATE_COLUMNS} FROM pipeline_templates WHERE template_id = $1",
                template_id,
            )
        return None if row is None else template_of(row, native)

    async def list_templates(self) -> list[Template]:
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {TEMPLATE_COLUMNS} FROM pipeline_templates ORDER BY template_id"
            )
        return [template_of(row, native) for row in rows]

    async def delete_template(self, template_id: str) -> bool:
        async with self.store.connection() as conn:
            status = await conn.execute(
                "DELETE FROM pipeline_templates WHERE template_id = $1", template_id
            )
        return bool(status != "DELETE 0")
