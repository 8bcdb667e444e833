"""What services and users change between messages: templates (and their translations), and
each user's channel switches, contact points, locale and quiet hours. :class:`Catalogue` is a
part of :class:`~tidings.delivery.pipeline.Pipeline`, kept here so each module stays readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tidings.core.limits import MAX_CATEGORY_LENGTH, MAX_TEMPLATE_ID_LENGTH
from tidings.delivery.channels.base import Channel
from tidings.delivery.locales import DEFAULT_LOCALE, check_locale
from tidings.delivery.models import Content, Preferences, QuietHours, Template
from tidings.delivery.steps import check_quiet_hours
from tidings.delivery.stores.base import PipelineStore
from tidings.delivery.templates import Renderer
from tidings.delivery.unsubscribe import Unsubscribe, UnsubscribeLinks
from tidings.errors import InvalidAddress, InvalidArgument

#: bus event: a template changed (every node drops it from its cache)
TEMPLATE_CHANGED = "pipeline-template-changed"


class Catalogue:
    """Templates and preferences; the pipeline provides what is declared here."""

    store: PipelineStore
    renderer: Renderer
    channels: dict[str, Channel]
    links: UnsubscribeLinks | None

    def check_channels(self, channels: Iterable[str]) -> tuple[str, ...]:
        raise NotImplementedError

    def validate(self, channel: str, address: Any) -> Any:
        raise NotImplementedError

    async def _announce(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    # Templates

    async def put_template(
        self, template_id: str, content: Content, locale: str = DEFAULT_LOCALE
    ) -> tuple[Template, bool]:
        """Create or replace a template's content, written in ``locale``.

        Raises:
            InvalidArgument: a bad id or an unknown locale.
            TemplateFailure: the content does not compile (nothing is stored).
        """
        _check_template_id(template_id)
        locale = check_locale(locale)
        self.renderer.compile(content)  # raises TemplateFailure before anything is stored
        result = await self.store.put_template(template_id, content, locale)
        await self._changed(template_id)
        return result

    async def put_translation(
        self, template_id: str, locale: str, content: Content
    ) -> Template | None:
        """Create or replace the template's content in ``locale``; None: no such template.

        Raises:
            InvalidArgument: an unknown locale. TemplateFailure: it does not compile.
        """
        locale = check_locale(locale)
        self.renderer.compile(content)
        template = await self.store.put_translation(template_id, locale, content)
        if template is not None:
            await self._changed(template_id)
        return template

    async def delete_translation(self, template_id: str, locale: str) -> bool:
        deleted = await self.store.delete_translation(template_id, check_locale(locale))
        if deleted:
            await self._changed(template_id)
        return deleted

    async def _changed(self, template_id: str) -> None:
        self.renderer.forget(template_id)
        await self._announce({"type": TEMPLATE_CHANGED, "template_id": template_id})

    async def delete_template(self, template_id: str) -> bool:
        deleted = await self.store.delete_template(template_id)
        self.renderer.forget(template_id)
        if deleted:
            await self._announce({"type": TEMPLATE_CHANGED, "template_id": template_id})
        return deleted

    # Preferences

    async def set_contact(self, user_id: str, channel: str, address: Any) -> Any:
        """Store a contact point in normal form; ``None`` removes it.

        Raises:
            InvalidArgument: no channel has that name.
            InvalidAddress: the address cannot be used on this channel (or it needs none, or
                it is not configured on this node).
        """
        self.check_channels([channel])
        found = self.channels.get(channel)
        if found is not None and not found.needs_address:
            raise InvalidAddress(f"{channel} deliveries need no contact point")
        normal = None if address is None else self.validate(channel, address)
        await self.store.set_contact(user_id, channel, normal)
        return normal

    async def set_channel(self, user_id: str, channel: str, enabled: bool) -> None:
        """Turn ``channel`` on or off for the user.

        Raises:
            InvalidArgument: no channel has that name.
        """
        self.check_channels([channel])
        await self.store.set_channel(user_id, channel, enabled)

    async def set_category(self, user_id: str, category: str, channel: str, enabled: bool) -> None:
        """Turn ``category`` on ``channel`` on or off for the user: messages of the category
        are not sent there while it is off (reason ``category_disabled``).

        Raises:
            InvalidArgument: no channel has that name, or a malformed category.
        """
        self.check_channels([channel])
        check_category(category)
        await self.store.set_category(user_id, category, channel, enabled)

    async def unsubscribe(self, token: str) -> Unsubscribe:
        """Honour a one-click unsubscribe link: its category off on its channel, or the whole
        channel for a message without a category.

        Raises:
            InvalidArgument: the link is forged, altered, expired, or this node makes none
                (no ``TIDINGS_PUBLIC_URL``); nothing is changed.
        """
        if self.links is None:
            raise InvalidArgument("this service sends no unsubscribe links (no public URL)")
        found = self.links.check(token)
        if found.category is None:
            await self.store.set_channel(found.user_id, found.channel, False)
        else:
            await self.store.set_category(found.user_id, found.category, found.channel, False)
        return found

    async def preferences(self, user_id: str) -> Preferences:
        return await self.store.preferences(user_id)

    async def set_locale(self, user_id: str, locale: str | None) -> str | None:
        """Set the user's locale (None removes it); in normal form.

        Raises:
            InvalidArgument: an unknown locale.
        """
        normal = None if locale is None else check_locale(locale)
        await self.store.set_locale(user_id, normal)
        return normal

    async def set_quiet_hours(
        self, user_id: str, timezone: str | None, start: str | None = None, end: str | None = None
    ) -> QuietHours | None:
        """Set the user's quiet hours (``timezone`` None removes them); in normal form.

        Raises:
            InvalidArgument: an unknown time zone, a malformed time, or a window of no length.
        """
        hours = None
        if timezone is not None:
            hours = check_quiet_hours(timezone, start or "", end or "")
        await self.store.set_quiet_hours(user_id, hours)
        return hours


def _check_template_id(template_id: str) -> None:
    if (
        not template_id
        or len(template_id) > MAX_TEMPLATE_ID_LENGTH
        or not template_id.isprintable()
    ):
        raise InvalidArgument(
            f"template ids are 1 to {MAX_TEMPLATE_ID_LENGTH} printable characters"
        )


def check_category(category: str) -> str:
    """Raises InvalidArgument unless ``category`` is 1 to 64 printable characters."""
    if (
        not isinstance(category, str)
        or not 0 < len(category) <= MAX_CATEGORY_LENGTH
        or not category.isprintable()
    ):
        raise InvalidArgument(f"category: 1 to {MAX_CATEGORY_LENGTH} printable characters")
    return category
