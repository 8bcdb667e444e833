"""When a delivery is tried again: full-jitter exponential backoff, shared by the workers (a
transient failure) and the pipeline's control loop (a delivery whose worker died)."""

from __future__ import annotations

from datetime import datetime, timedelta

from tidings.core.models import utcnow


def retry_delay(attempt: int, base: float, cap: float, hint: float | None, rand: float) -> float:
    """Seconds before try ``attempt + 1``: full jitter over base * 2^(attempt-1), capped; a
    provider's ``Retry-After`` is a floor."""
    ceiling = min(cap, base * 2.0 ** max(attempt - 1, 0))
    delay = ceiling * rand
    if hint is not None:
        delay = max(delay, min(hint, cap))
    return delay


def retry_at(delay: float) -> datetime:
    """The moment ``delay`` seconds from now."""
    return utcnow() + timedelta(seconds=delay)
