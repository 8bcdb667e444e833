"""Rendering message content in Jinja2's sandbox, with a per-node cache of compiled templates.

Templates come from services, and their data from anywhere: the sandbox refuses attribute
access to internals (``__class__``, ``mro`` …) and unsafe calls, and ``html`` is autoescaped.
Stored templates are cached by id and version; a change on any node drops the entry on every
node (a bus event), and entries also expire after :data:`CACHE_TTL` in case an event was lost.

A stored template may have translations: a user's locale picks one through its fallback chain
(:mod:`tidings.delivery.locales`), compiled on first use. Every template has the locale's
filters (``date``, ``datetime``, ``time``, ``number``, ``currency``, ``percent``) and the
variable ``locale``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tidings.delivery.channels.base import Rendered
from tidings.delivery.locales import DEFAULT_LOCALE, FILTERS, pick
from tidings.delivery.models import Content, Template
from tidings.errors import TemplateFailure

# Moved to tidings.errors; importable from here for one release.

CACHE_TTL = 60.0
CACHE_SIZE = 512
#: longest rendered part, in characters: a loop in a template cannot exhaust memory
MAX_RENDERED = 1_000_000


@dataclass(frozen=True, slots=True)
class _Compiled:
    subject: Any
    text: Any
    html: Any
    version: int
    loaded_at: float
    #: the locale the content is written in, and its translations (stored templates)
    locale: str = DEFAULT_LOCALE
    translations: dict[str, Content] = field(default_factory=dict)
    #: translations compiled so far, by tag
    compiled: dict[str, _Compiled] = field(default_factory=dict)


class Renderer:
    """Compiles and renders :class:`Content`; caches stored templates by id."""

    def __init__(self, fetch: Callable[[str], Awaitable[Template | None]]) -> None:
        self._fetch = fetch
        self._plain = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)
        self._html = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
        for env in (self._plain, self._html):
            env.filters.update(FILTERS)
        self._stored: OrderedDict[str, _Compiled] = OrderedDict()
        self._inline: OrderedDict[Content, _Compiled] = OrderedDict()

    def compile(self, content: Content, version: int = 0) -> _Compiled:
        """Raises: TemplateFailure with Jinja's words."""
        try:
            return _Compiled(
                self._plain.from_string(content.subject) if content.subject else None,
                self._plain.from_string(content.text),
                self._html.from_string(content.html) if content.html else None,
                version,
                time.monotonic(),
            )
        except TemplateError as exc:
            raise TemplateFailure(f"template does not compile: {exc}") from None

    def forget(self, template_id: str) -> None:
        """Drop a stored template from this node's cache (it changed somewhere)."""
        self._stored.pop(template_id, None)

    async def load(self, template_id: str) -> _Compiled | None:
        cached = self._stored.get(template_id)
        if cached is not None and time.monotonic() - cached.loaded_at < CACHE_TTL:
            self._stored.move_to_end(template_id)
            return cached
        template = await self._fetch(template_id)
        if template is None:
            self._stored.pop(template_id, None)
            return None
        compiled = self.compile(template.content, template.version)
        compiled = _Compiled(
            compiled.subject,
            compiled.text,
            compiled.html,
            compiled.version,
            compiled.loaded_at,
            template.locale,
            dict(template.translations),
        )
        self._stored[template_id] = compiled
        while len(self._stored) > CACHE_SIZE:
            self._stored.popitem(last=False)
        return compiled

    def inline(self, content: Content) -> _Compiled:
        compiled = self._inline.get(content)
        if compiled is None:
            compiled = self._inline[content] = self.compile(content)
            while len(self._inline) > CACHE_SIZE:
                self._inline.popitem(last=False)
        return compiled

    async def render(
        self,
        template_id: str | None,
        content: Content | None,
        data: Any,
        *,
        user_id: str,
        channel: str,
        locale: str | None = None,
    ) -> Rendered:
        """Render for a user in ``locale`` (None: the template's own): the translation its
        fallback chain finds, else the default content.

        Raises: TemplateFailure (unknown template, compile or render error).
        """
        if template_id is not None:
            stored = await self.load(template_id)
            if stored is None:
                raise TemplateFailure(f"unknown template {template_id!r}")
            tag, formatting = pick(locale, stored.translations, stored.locale)
            compiled = stored if tag is None else self._translation(stored, tag)
        elif content is not None:
            compiled, formatting = self.inline(content), locale or DEFAULT_LOCALE
        else:
            raise TemplateFailure("a message needs a template_id or content")
        context = dict(data) if isinstance(data, dict) else {}
        context.update(data=data, user_id=user_id, channel=channel, locale=formatting)
        try:
            parts = [
                None if part is None else _bounded(part.render(context))
                for part in (compiled.subject, compiled.text, compiled.html)
            ]
        except TemplateFailure:
            raise
        except Exception as exc:  # Jinja raises many kinds, SecurityError included
            raise TemplateFailure(f"template does not render: {exc}") from None
        subject, text, html = parts
        return Rendered(text=text or "", subject=subject, html=html, data=data)

    def _translation(self, stored: _Compiled, tag: str) -> _Compiled:
        found = stored.compiled.get(tag)
        if found is None:
            found = stored.compiled[tag] = self.compile(stored.translations[tag], stored.version)
        return found


def _bounded(text: str) -> str:
    if len(text) > MAX_RENDERED:
        raise TemplateFailure(f"rendered text is longer than {MAX_RENDERED} characters")
    return text
