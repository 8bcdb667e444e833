"""tidings: push notifications for Python applications.

The public API; see the documentation in ``docs/``.
"""

from __future__ import annotations

from tidings.config import Settings
from tidings.core.models import MarkSeenResult, Notification, NotifyResult, UnseenCount
from tidings.errors import TidingsError
from tidings.node.tidings import Tidings
from tidings.version import __version__

__all__ = [
    "MarkSeenResult",
    "Notification",
    "NotifyResult",
    "Settings",
    "Tidings",
    "TidingsError",
    "UnseenCount",
    "__version__",
]
