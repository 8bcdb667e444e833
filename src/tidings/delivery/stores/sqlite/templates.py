"""The :class:`~tidings.delivery.stores.base.TemplateStore` facet of the pipeline on SQLite."""

from __future__ import annotations

import sqlite3

from tidings.core.models import isoformat, parse_iso, utcnow
from tidings.delivery.models import Content, Template
from tidings.delivery.stores.base import TemplateStore
from tidings.delivery.stores.rows import TEMPLATE_COLUMNS, template_of, with_translations
from tidings.delivery.stores.sqlite.common import SqliteTables


class SqliteTemplates(SqliteTables, TemplateStore):
    """Templates and their translations on SQLite."""

    async def put_template(
        self, template_id: str, content: Content, locale: str = "en"
    ) -> tuple[Template, bool]:
        def run(conn: sqlite3.Connection) -> tuple[Template, bool]:
            now = isoformat(utcnow())
            created = conn.execute(
                f"INSERT INTO pipeline_templates ({TEMPLATE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, 1, ?, ?, ?) ON CONFLICT (template_id) DO UPDATE SET "
                "subject = excluded.subject, text = excluded.text, html = excluded.html, "
                "version = version + 1, updated_at = excluded.updated_at, "
                "locale = excluded.locale RETURNING version",
                (template_id, content.subject, content.text, content.html, now, now, locale),
            ).fetchone()
            [template] = _templates(conn, template_id)
            return template, created[0] == 1

        return await self.store.write(run)

    async def put_translation(
        self, template_id: str, locale: str, content: Content
    ) -> Template | None:
        def run(conn: sqlite3.Connection) -> Template | None:
            now = isoformat(utcnow())
            bumped = conn.execute(
                "UPDATE pipeline_templates SET version = version + 1, updated_at = ? "
                "WHERE template_id = ? RETURNING template_id",
                (now, template_id),
            ).fetchone()
            if bumped is None:
                return None
            conn.execute(
                "INSERT OR REPLACE INTO pipeline_template_locales VALUES (?, ?, ?, ?, ?, ?)",
                (template_id, locale, content.subject, content.text, content.html, now),
            )
            return _templates(conn, template_id)[0]

        return await self.store.write(run)

    async def delete_translation(self, template_id: str, locale: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            gone = conn.execute(
                "DELETE FROM pipeline_template_locales WHERE template_id = ? AND locale = ?",
                (template_id, locale),
            ).rowcount
            if gone:
                conn.execute(
                    "UPDATE pipeline_templates SET version = version + 1, updated_at = ? "
                    "WHERE template_id = ?",
                    (isoformat(utcnow()), template_id),
                )
            return gone > 0

        return await self.store.write(run)

    async def get_template(self, template_id: str) -> Template | None:
        templates = await self.store.read(lambda conn: _templates(conn, template_id))
        return templates[0] if templates else None

    async def list_templates(self) -> list[Template]:
        return await self.store.read(lambda conn: _templates(conn, None))

    async def delete_template(self, template_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM pipeline_template_locales WHERE template_id = ?", (template_id,)
            )
            cur = conn.execute(
                "DELETE FROM pipeline_templates WHERE template_id = ?", (template_id,)
            )
            return cur.rowcount > 0

        return await self.store.write(run)


def _templates(conn: sqlite3.Connection, template_id: str | None) -> list[Template]:
    """The template ``template_id``, or every template (``None``) by id, with translations."""
    sql = f"SELECT {TEMPLATE_COLUMNS} FROM pipeline_templates "
    translated = "SELECT template_id, locale, subject, text, html FROM pipeline_template_locales "
    if template_id is None:
        rows = conn.execute(sql + "ORDER BY template_id").fetchall()
        translations = conn.execute(translated + "ORDER BY template_id, locale").fetchall()
    else:
        rows = conn.execute(sql + "WHERE template_id = ?", (template_id,)).fetchall()
        translations = conn.execute(
            translated + "WHERE template_id = ? ORDER BY locale", (template_id,)
        ).fetchall()
    return with_translations([template_of(row, parse_iso) for row in rows], translations)
