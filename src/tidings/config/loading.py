"""Loading :class:`~tidings.config.settings.Settings` so that every mistake is one line that
names the setting (its variable, or the flag the user typed) and gives an example."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from tidings.config.settings import Settings
from tidings.errors import ConfigurationError
from tidings.logs import safe_url

#: examples for settings whose default is no example (unset, or generated)
EXAMPLES: dict[str, str] = {
    "jwt_secret": "\"$(python -c 'import secrets; print(secrets.token_urlsafe(48))')\"",
    "service_token_key": "\"$(python -c 'import secrets; print(secrets.token_urlsafe(48))')\"",
    "public_url": "https://push.example.com",
    "device_queue_max_length": "1000",
    "device_queue_max_age": "86400",
    "topic_ttls": "'{\"chat:*\": 86400}'",
    "history_max": "1000",
    "history_max_age": "7776000",
    "history_categories": '\'{"marketing": {"max": 50, "max_age": 604800}}\'',
    "topic_patterns": "pet,news:*",
    "allowed_origins": "https://app.example.com,https://admin.example.com",
    "delegate_headers": "X-Tenant,X-Request-Id",
    "max_connections_per_user": "100",
    "cookie_secure": "true",
    "rate_limits": '\'{"email": "20/hour", "sms": "10/hour"}\'',
    "smtp_url": "smtp://user:password@mail.example.com:587?starttls=true",
    "status_webhook_urls": "https://app.example.com/tidings/status",
}

# A value is echoed back to help spot a typo, except where it may be a secret.
_SECRET = re.compile(r"secret|key|token|password", re.IGNORECASE)


def load_settings(flags: Mapping[str, str] | None = None, **options: Any) -> Settings:
    """:class:`Settings` from ``options`` and the environment, or one line saying what is wrong.

    ``flags`` maps the fields given as command-line options to their flags (``--port``), so the
    message names what the user typed.

    Raises:
        ConfigurationError: a setting is malformed; the message names it and gives an example.
    """
    try:
        settings = Settings(**options)
    except ValidationError as exc:
        problems = [_problem(error, flags or {}) for error in exc.errors()]
    except SettingsError as exc:  # a source failed before validation (kept as a safety net)
        found = re.search(r'field "(\w+)"', str(exc))
        field = found.group(1) if found else ""
        problems = [f"{_name(field, flags or {})} cannot be read ({exc}); {_example(field)}"]
    else:  # a server's channels are the registered ones; an application's may add others
        from tidings.delivery.settings import unknown_rate_limit

        message = unknown_rate_limit(settings.rate_limits)
        if message is None:
            return settings
        error = {"loc": ("rate_limits",), "msg": message, "input": json.dumps(settings.rate_limits)}
        problems = [_problem(error, flags or {})]
    raise ConfigurationError("; ".join(problems)) from None


def _problem(error: Any, flags: Mapping[str, str]) -> str:
    field = str(error["loc"][0]) if error["loc"] else ""
    message = str(error["msg"]).removeprefix("Value error, ")
    message = re.sub(r"^Input should", "should", message)
    message = re.sub(r"^(String|List|Dictionary) should", "should", message)
    shown = ""
    text = _printable(field, error.get("input"))
    if text is not None:
        shown = f" {text}" if field in flags else f"={text!r}"
    return f"{_name(field, flags)}{shown} {message}; {_example(field, flags)}"


def _printable(field: str, value: Any) -> str | None:
    """The value as it may be shown: never a secret's, a URL's without its password."""
    if not isinstance(value, str | int | float) or _SECRET.search(field):
        return None
    text = str(value)
    if "://" in text:
        try:  # each URL of a list
            text = ",".join(safe_url(part) for part in text.split(","))
        except ValueError:
            return None
    return text if len(text) <= 80 else None


def _name(field: str, flags: Mapping[str, str]) -> str:
    return flags.get(field) or f"TIDINGS_{field.upper()}"


def _example(field: str, flags: Mapping[str, str] | None = None) -> str:
    info = Settings.model_fields.get(field)
    if info is None:
        return "see docs/configuration.md"
    example = EXAMPLES.get(field)
    if example is None:
        default = info.get_default(call_default_factory=True)
        if isinstance(default, bool):
            example = str(default).lower()
        elif isinstance(default, list):
            example = ",".join(default)
        elif isinstance(default, dict):
            example = "'" + json.dumps(default) + "'"
        elif default is None:
            return "see docs/configuration.md"
        else:
            example = str(default)
    flag = (flags or {}).get(field)
    return f"e.g. {flag} {example}" if flag else f"e.g. TIDINGS_{field.upper()}={example}"
