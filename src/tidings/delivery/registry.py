"""Channel classes by name: the built-in ones and an application's, registered the same way.

A channel class declares its :attr:`~tidings.delivery.channels.base.Channel.name`; a
distribution makes it known through the entry-point group ``tidings.channels``
(``name = "module:Class"``), as tidings does for its own five in ``pyproject.toml``::

    [project.entry-points."tidings.channels"]
    pigeon = "my_app.channels:PigeonChannel"

Names are read from the installed distributions' metadata; a class is imported only when a
pipeline starts and builds its channels (:meth:`Channel.from_settings
<tidings.delivery.channels.base.Channel.from_settings>`). An application may also hand
instances to the node, ``Tidings(channels=[PigeonChannel(...)])``: an instance is used as it
is, replaces a registered channel of the same name, or adds its name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from tidings.core.limits import MAX_CHANNEL_NAME_LENGTH
from tidings.delivery.channels.base import CHANNEL_NAMES, Channel
from tidings.errors import ConfigurationError

if TYPE_CHECKING:
    from tidings.delivery.ports import PipelineHost

#: the entry-point group channels register in
GROUP = "tidings.channels"
#: what a channel's name may be: it appears in URLs, settings and metric labels
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")

#: tidings' own channels, in the order they are documented (registered like any other)
BUILTIN_NAMES = CHANNEL_NAMES


def ordered(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` once each: the built-ins in their documented order, then the others sorted."""
    given = set(names)
    return tuple(n for n in BUILTIN_NAMES if n in given) + tuple(
        sorted(given.difference(BUILTIN_NAMES))
    )


def valid_channel_name(name: object) -> bool:
    """Whether ``name`` can name a channel: lower-case letters, digits and ``_``, starting with
    a letter, at most :data:`~tidings.core.limits.MAX_CHANNEL_NAME_LENGTH` characters."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_CHANNEL_NAME_LENGTH
        and NAME_PATTERN.fullmatch(name) is not None
    )


class ChannelRegistry:
    """The channel classes of the entry-point group :data:`GROUP`, loaded on first use."""

    def __init__(self, found: Iterable[EntryPoint] | None = None) -> None:
        self._points: dict[str, EntryPoint] = {}
        for point in entry_points(group=GROUP) if found is None else found:
            self._points.setdefault(point.name, point)  # the first distribution found wins
        self._classes: dict[str, type[Channel]] = {}

    def names(self) -> tuple[str, ...]:
        """Every registered name (nothing is imported)."""
        return ordered(self._points)

    def __contains__(self, name: object) -> bool:
        return name in self._points

    def load(self, name: str) -> type[Channel]:
        """The class registered as ``name``.

        Raises:
            ConfigurationError: no such name, the entry point does not import, or it names
                something that is not a channel class of that name.
        """
        found = self._classes.get(name)
        if found is not None:
            return found
        point = self._points.get(name)
        if point is None:
            raise ConfigurationError(f"no channel is registered as {name!r}")
        try:
            loaded = point.load()
        except Exception as exc:
            raise ConfigurationError(
                f"channel {name!r} ({point.value}) cannot be imported: {exc}"
            ) from exc
        if not (isinstance(loaded, type) and issubclass(loaded, Channel)):
            raise ConfigurationError(f"channel {name!r} ({point.value}) is not a Channel class")
        if not valid_channel_name(name):
            raise ConfigurationError(
                f"channel {name!r} ({point.value}): a channel's name is lower-case letters, "
                f"digits and _, starting with a letter, at most {MAX_CHANNEL_NAME_LENGTH} long"
            )
        if getattr(loaded, "name", None) != name:
            raise ConfigurationError(
                f"channel {name!r} ({point.value}) declares the name "
                f"{getattr(loaded, 'name', None)!r}"
            )
        self._classes[name] = loaded
        return loaded


def channel_names() -> tuple[str, ...]:
    """The names registered in this environment (what settings can be checked against)."""
    return ChannelRegistry().names()


async def build_channels(
    host: PipelineHost, registry: ChannelRegistry, given: Iterable[Channel] = ()
) -> dict[str, Channel]:
    """The pipeline's channels by name: the ``given`` instances, and every other registered
    channel its settings configure (:meth:`Channel.from_settings`), in documented order."""
    chosen = {channel.name: channel for channel in given}
    for name in registry.names():
        if name not in chosen:
            built = await registry.load(name).from_settings(host)
            if built is not None:
                chosen[name] = built
    return {name: chosen[name] for name in ordered(chosen)}


async def default_channels(host: PipelineHost) -> list[Channel]:
    """The registered channels the settings configure (kept for one release: use
    :func:`build_channels`)."""
    return list((await build_channels(host, ChannelRegistry())).values())
