"""Settings, read from keyword arguments, flags or ``TIDINGS_*`` environment variables.

List settings take JSON (``["a", "b"]``) or comma-separated values (``a,b``); mapping settings
take JSON. :func:`load_settings` turns every mistake into one line that names the setting and
gives an example."""

from __future__ import annotations

from tidings.config.loading import EXAMPLES, load_settings
from tidings.config.settings import Settings

__all__ = ["EXAMPLES", "Settings", "load_settings"]
