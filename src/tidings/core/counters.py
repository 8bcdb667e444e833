"""What a node counts as things happen, read by its metrics (``GET /metrics``).

One :class:`Counters` belongs to one node: two nodes in one process count apart.
"""

from __future__ import annotations

from collections import Counter


class Counters:
    """A node's counts, incremented where things happen (``counters.frames_out += 1``)."""

    __slots__ = (
        "bus_publish_failures",
        "bus_reconnects",
        "connections_opened",
        "errors",
        "frames_in",
        "frames_out",
        "sends",
        "slow_closed",
    )

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.connections_opened = 0
        self.slow_closed = 0
        self.bus_reconnects = 0
        self.bus_publish_failures = 0
        #: errors by kind: a protocol error code, ``store_unavailable``, ``internal`` …
        self.errors: Counter[str] = Counter()
        #: pipeline sends by (channel, outcome), outcome being ``sent``, ``retry`` or ``failed``
        self.sends: Counter[tuple[str, str]] = Counter()

    def count_error(self, kind: str) -> None:
        self.errors[kind] += 1
