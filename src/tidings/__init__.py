"""tidings: push notifications for Python applications.

The public API; see the documentation in ``docs/``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tidings.config import Settings
from tidings.core.models import MarkSeenResult, Notification, NotifyResult, UnseenCount
from tidings.core.tidings import Tidings
from tidings.errors import TidingsError

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
