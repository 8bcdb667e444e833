"""Backend lookup by URL scheme, shared by storage and bus."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from tidings.errors import ConfigurationError


def load_backend(kind: str, table: dict[str, str], url: str) -> type:
    """The class that ``table`` maps ``url``'s scheme to, imported on first use."""
    scheme = urlsplit(url).scheme
    try:
        target = table[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in sorted(table))
        raise ConfigurationError(f"unknown {kind} URL {url!r}; expected one of {known}") from None
    module_name, _, class_name = target.partition(":")
    cls: type = getattr(importlib.import_module(module_name), class_name)
    return cls
