"""The :class:`~tidings.delivery.stores.base.TemplateStore` facet of the pipeline on SQLite."""

from __future__ import annotations

import sqlite3

from tidings.core.models import isoformat, parse_iso, utcnow
from tidings.delivery.models import Content, Template
from tidings.delivery.stores.base import TemplateStore
from tidings.delivery.stores.rows import TEMPLATE_COLUMNS, template_of
from tidings.delivery.stores.sqlite.common import SqliteTables


class SqliteTemplates(SqliteTables, TemplateStore):
    """Templates on SQLite."""

    async def put_template(self, template_id: str, content: Content) -> tuple[Template, bool]:
        def run(conn: sqlite3.Connection) -> tuple[Template, bool]:
            now = isoformat(utcnow())
            row = conn.execute(
                "SELECT version, created_at FROM pipeline_templates WHERE template_id = ?",
                (template_id,),
            ).fetchone()
            version, created = (1, now) if row is None else (row[0] + 1, row[1])
            conn.execute(
                "INSERT OR REPLACE INTO pipeline_templates VALUES (?, ?, ?, ?, ?, ?, ?)",
                (template_id, content.subject, content.text, content.html, version, created, now),
            )
            template = Template(template_id, content, version, parse_iso(created), parse_iso(now))
            return template, row is None

        return await self.store.write(run)

    async def get_template(self, template_id: str) -> Template | None:
        templates = await self.store.read(lambda conn: _templates(conn, template_id))
        return templates[0] if templates else None

    async def list_templates(self) -> list[Template]:
        return await self.store.read(lambda conn: _templates(conn, None))

    async def delete_template(self, template_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM pipeline_templates WHERE template_id = ?", (template_id,)
            )
            return cur.rowcount > 0

        return await self.store.write(run)


def _templates(conn: sqlite3.Connection, template_id: str | None) -> list[Template]:
    """The template ``template_id``, or every template (``None``) by id."""
    sql = f"SELECT {TEMPLATE_COLUMNS} FROM pipeline_templates "
    rows = (
        conn.execute(sql + "ORDER BY template_id").fetchall()
        if template_id is None
        else conn.execute(sql + "WHERE template_id = ?", (template_id,)).fetchall()
    )
    return [template_of(row, parse_iso) for row in rows]
