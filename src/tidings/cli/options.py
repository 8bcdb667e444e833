"""What the commands share: settings from options, one-line errors, JSON output."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from tidings.config import Settings, load_settings
from tidings.core.limits import MAX_USER_ID_LENGTH
from tidings.errors import ConfigurationError, TidingsError

T = TypeVar("T")

LOG_LEVELS = click.Choice(["critical", "error", "warning", "info", "debug"], case_sensitive=False)
CREATE_CLIENT = 'eval "$(tidings clients create NAME --scope notify --env)"'


def _settings(**options: Any) -> Settings:
    given = {k: v for k, v in options.items() if v is not None}
    flags = {k: "--" + k.replace("_", "-") for k in given}
    try:
        return load_settings(flags, **given)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except TidingsError as exc:
        raise click.ClickException(str(exc)) from None


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def setting_option(
    *decls: str, setting: str, help: str, shown: str | None = None, **options: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An option for a setting. Settings reads its variable (so a bad value gets the same
    message either way); the help shows the variable and the default."""
    if shown is None:
        value = Settings.model_fields[setting].get_default(call_default_factory=True)
        shown = str(value).lower() if isinstance(value, bool) else str(value)
    extra = f"[env var: TIDINGS_{setting.upper()}; default: {shown}]"
    return click.option(*decls, help=f"{help}  {extra}", **options)


store_option = setting_option("--store", setting="store", help="Store URL.")
bus_option = setting_option("--bus", setting="bus", help="Bus URL.")
node_option = setting_option(
    "--node-id", setting="node_id", help="This node's name.", shown="HOST-PID"
)
log_option = click.option(
    "--log-level", type=LOG_LEVELS, default="info", show_default=True, help="Log level."
)


def _user_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not 0 < len(value.strip()) <= MAX_USER_ID_LENGTH:
        raise click.BadParameter(f"must be 1 to {MAX_USER_ID_LENGTH} characters, e.g. alice")
    return value


url_option = click.option(
    "--url",
    envvar="TIDINGS_URL",
    show_envvar=True,
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of the tidings server.",
)


def _unreachable(url: str, exc: BaseException) -> click.ClickException:
    reason = str(exc) or type(exc).__name__
    return click.ClickException(
        f"cannot reach a tidings server at {url} ({reason}); start one with `tidings serve`, "
        "or give its URL with --url or TIDINGS_URL"
    )


def _notification_data(data: str) -> Any:
    """DATA as JSON; text that does not start like JSON is sent as ``{"text": DATA}``."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if data.lstrip().startswith(("{", "[")):
            raise click.BadParameter(
                f"starts like JSON but is not JSON ({exc}); quote every string in it, e.g. "
                """'{"text": "Your order shipped"}', or send plain words""",
                param_hint="DATA",
            ) from None
        return {"text": data}
