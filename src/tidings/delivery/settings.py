"""The pipeline's settings, checked when they are loaded, before anything starts (the config
layer calls these from its validators, so that a mistake is named with its variable)."""

from __future__ import annotations

from collections.abc import Mapping

from tidings.delivery.planner import parse_rate_limits
from tidings.delivery.registry import channel_names
from tidings.errors import ConfigurationError


def check_rate_limits(value: dict[str, str]) -> dict[str, str]:
    """``TIDINGS_RATE_LIMITS`` well formed (its channel names are checked where every channel
    is known: :func:`unknown_rate_limit`, and the pipeline when it starts).

    Raises:
        ValueError: a malformed limit.
    """
    try:
        parse_rate_limits(value)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None
    return value


def check_smtp_url(value: str | None) -> str | None:
    """``TIDINGS_SMTP_URL`` parsed as the email channel will.

    Raises:
        ValueError: it is not an SMTP URL (the message never shows its password).
    """
    from tidings.delivery.channels.email import parse_smtp_url

    if value:
        try:
            parse_smtp_url(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
    return value


def unknown_rate_limit(limits: Mapping[str, str]) -> str | None:
    """What is wrong with the channel names of ``limits`` for a node whose channels are the
    registered ones (a server: an application may add others, checked when its pipeline
    starts); ``None`` when nothing is."""
    names = channel_names()
    unknown = [name for name in limits if name not in names]
    if not unknown:
        return None
    return f"rate limit for unknown channel {unknown[0]!r} (channels: {', '.join(names)})"
