"""`tidings notify` and `tidings listen`: a service's and a device's view from the shell."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from typing import Any

import click
import orjson

from tidings.cli.clients import TO_THE_SERVERS_SECRET, device_signer
from tidings.cli.options import (
    CREATE_CLIENT,
    _echo_json,
    _notification_data,
    _run,
    _settings,
    _unreachable,
    _user_id,
    store_option,
    url_option,
)
from tidings.errors import ClientError, TidingsError


@click.command()
@click.argument("user_id", callback=_user_id)
@click.argument("data")
@url_option
@click.option("--client-id", envvar="TIDINGS_CLIENT_ID", show_envvar=True, help="Client id.")
@click.option(
    "--client-secret", envvar="TIDINGS_CLIENT_SECRET", show_envvar=True, help="Its secret."
)
@click.option("--notification-id", help="Idempotency key.")
def notify(
    user_id: str,
    data: str,
    url: str,
    client_id: str | None,
    client_secret: str | None,
    notification_id: str | None,
) -> None:
    """Send a notification with DATA (JSON; plain text becomes {"text": …}) to USER_ID.

    The client comes from `tidings clients create NAME --scope notify --env`.
    """
    import httpx

    from tidings.client import TidingsClient

    if user_id.lstrip().startswith(("{", "[")):
        raise click.UsageError(
            "USER_ID looks like JSON: the order is `tidings notify USER_ID DATA`, "
            """e.g. tidings notify alice '{"text": "Hi"}'"""
        )
    payload = _notification_data(data)
    for flag, variable, value in (
        ("--client-id", "TIDINGS_CLIENT_ID", client_id),
        ("--client-secret", "TIDINGS_CLIENT_SECRET", client_secret),
    ):
        if not value:
            raise click.UsageError(
                f"missing {flag} (or {variable}): create a client in the server's folder "
                f"with `{CREATE_CLIENT}`"
            )
    assert client_id is not None and client_secret is not None

    async def send() -> dict[str, Any]:
        async with TidingsClient(url, client_id, client_secret, scope="notify") as client:
            return await client.notify(user_id, payload, notification_id=notification_id)

    try:
        _echo_json(_run(send()))
    except (httpx.TransportError, httpx.InvalidURL, OSError) as exc:
        raise _unreachable(url, exc) from None
    except click.ClickException as exc:
        if "invalid_client" not in exc.message:
            raise
        raise click.ClickException(
            f"{exc.message}; check TIDINGS_CLIENT_ID and TIDINGS_CLIENT_SECRET against `tidings "
            f"clients list` in the server's folder, or create a client: `{CREATE_CLIENT}`"
        ) from None


@click.command()
@click.argument("user_id", required=False, callback=_user_id)
@url_option
@click.option(
    "--token", "device_token", envvar="TIDINGS_TOKEN", show_envvar=True, help="Device JWT."
)
@click.option("--session-id", help="Session id to announce.")
@click.option("--mark-seen", is_flag=True, help="Fetch and mark seen whenever the count rises.")
@click.option("--once", is_flag=True, help="Exit after the first connection ends.")
@store_option
def listen(
    user_id: str | None,
    url: str,
    device_token: str | None,
    session_id: str | None,
    mark_seen: bool,
    once: bool,
    store: str | None,
) -> None:
    """Connect as a device and print every frame as a JSON line.

    Give USER_ID to mint a token with the local secret (like `tidings token`), or --token.
    Reconnects with jittered backoff, keeping its connection id.
    """
    if not device_token and not user_id:
        raise click.UsageError("give USER_ID or --token")
    source = None
    if not device_token:
        assert user_id is not None
        signer, source = device_signer(_settings(store=store))
        device_token = signer.issue(user_id)
    ws_url = url.replace("http", "ws", 1).rstrip("/")
    ws_url = ws_url if ws_url.endswith("/ws") else ws_url + "/ws"
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_listen(ws_url, device_token, session_id, mark_seen, once))
    except ClientError as exc:  # only a refused token ends the loop
        fix = {
            None: "mint one with `tidings token USER_ID` in the server's folder",
            "TIDINGS_JWT_SECRET": "set it to the server's, or unset it to use the server's store",
        }.get(source, "to use the server's secret, " + TO_THE_SERVERS_SECRET)
        which = f"signed with {source}" if source else "of --token (TIDINGS_TOKEN)"
        raise click.ClickException(f"the server refused the token {which} ({exc}); {fix}") from None
    except TidingsError as exc:
        raise click.ClickException(str(exc)) from None


async def _listen(
    url: str, token: str, session_id: str | None, mark_seen: bool, once: bool
) -> None:
    from websockets.exceptions import InvalidURI, WebSocketException

    from tidings.client import DeviceClient

    connection_id: str | None = None
    delay = 0.5
    while True:
        device = DeviceClient(url, token=token, session_id=session_id, connection_id=connection_id)
        try:
            welcome = await device.connect()
        except InvalidURI as exc:
            raise click.BadParameter(str(exc), param_hint="--url") from None
        except (OSError, TimeoutError, WebSocketException, ClientError) as exc:
            if isinstance(exc, ClientError) and exc.status == 401:
                raise
            if once:
                raise _unreachable(url, exc) from None
            click.echo(f"# cannot connect ({exc}); retrying in {delay:.1f}s", err=True)
        else:
            delay = 0.5
            connection_id, session_id = device.connection_id, device.session_id
            _print_line(welcome)
            await _pump(device, mark_seen)
            click.echo(f"# disconnected (code {device.close_code})", err=True)
        if once:
            return
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 30.0)


async def _pump(device: Any, mark_seen: bool) -> None:
    try:
        async for frame in device.events():
            _print_line(frame)
            if mark_seen and frame.get("type") == "newNotificationCountChanged" and frame["count"]:
                notes = await device.get_unseen()
                _print_line({"type": "newNotificationData", "notifications": notes})
                if notes:
                    await device.mark_seen([n["notification_id"] for n in notes])
    except ClientError as exc:
        click.echo(f"# {exc}", err=True)
    finally:
        await device.close()


def _print_line(frame: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(frame).decode() + "\n")
    sys.stdout.flush()
