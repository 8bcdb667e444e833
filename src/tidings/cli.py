"""The ``tidings`` command: serve, manage clients, mint device tokens, notify, listen."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from tidings import __version__
from tidings.auth.jwt import JwtAuthenticator
from tidings.auth.oauth import SCOPES, create_client, parse_scopes
from tidings.config import Settings
from tidings.errors import ClientError, ConfigurationError, TidingsError
from tidings.logs import configure, safe_url
from tidings.storage import Store, create_store

T = TypeVar("T")


def _settings(**options: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except (ClientError, ConfigurationError, TidingsError) as exc:
        raise click.ClickException(str(exc)) from None


async def _with_store(url: str, fn: Callable[[Store], Awaitable[T]]) -> T:
    async with create_store(url) as store:
        return await fn(store)


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


store_option = click.option("--store", envvar="TIDINGS_STORE", help="Store URL.")


@click.group()
@click.version_option(__version__, prog_name="tidings")
def main() -> None:
    """tidings: push notifications for Python applications."""


@main.command()
@click.option("--host", help="Interface to bind (TIDINGS_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (TIDINGS_PORT, default 8000).")
@store_option
@click.option("--bus", help="Bus URL (TIDINGS_BUS, default memory://).")
@click.option("--node-id", help="This node's name (TIDINGS_NODE_ID).")
@click.option("--log-level", default="info", show_default=True)
@click.option("--banner/--no-banner", default=False, help="Print how to try it out.")
@click.option("--demo/--no-demo", default=None, help="Serve the demo inbox (never in production).")
def serve(
    host: str | None,
    port: int | None,
    store: str | None,
    bus: str | None,
    node_id: str | None,
    log_level: str,
    banner: bool,
    demo: bool | None,
) -> None:
    """Run a tidings node (devices on /ws, the HTTP API on the same port)."""
    from tidings.server import run

    settings = _settings(host=host, port=port, store=store, bus=bus, node_id=node_id, demo=demo)
    configure(log_level, settings.log_format)
    if banner:
        _print_banner(settings)
    try:
        run(settings, log_level=log_level)
    except TidingsError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@store_option
@click.option("--bus", help="Bus URL (TIDINGS_BUS, default memory://).")
@click.option("--node-id", help="This worker's name (TIDINGS_NODE_ID).")
@click.option("--workers", type=int, help="Worker loops (TIDINGS_WORKERS, default 1).")
@click.option("--log-level", default="info", show_default=True)
def worker(
    store: str | None,
    bus: str | None,
    node_id: str | None,
    workers: int | None,
    log_level: str,
) -> None:
    """Send pipeline deliveries, without serving devices or the API, until SIGTERM."""
    settings = _settings(store=store, bus=bus, node_id=node_id, workers=workers)
    if settings.workers < 1:
        raise click.UsageError("a worker process needs --workers 1 or more")
    configure(log_level, settings.log_format)
    _run(_work(settings))


async def _work(settings: Settings) -> None:
    import signal

    from tidings.core.tidings import Tidings

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Tidings(settings):
        logging.getLogger("tidings").info(
            "worker %s sending deliveries (store %s)", settings.node_id, safe_url(settings.store)
        )
        await stop.wait()


def _print_banner(settings: Settings) -> None:
    base = settings.public_url or f"http://{settings.host}:{settings.port}"
    ws = base.replace("http", "ws", 1) + "/ws"
    demo = f"\n  demo inbox           {base}/demo   (open it in two tabs)" if settings.demo else ""
    click.echo(
        f"""
tidings {__version__} on {base}  (store {safe_url(settings.store)}, bus {safe_url(settings.bus)})
  devices connect to   {ws}
  API reference        {base}/docs
  admin console        {base}/admin{demo}

Try it from a second terminal in this folder:
  . .venv/bin/activate
  tidings listen alice --mark-seen            # a device of user 'alice'
Then from a third:
  . .venv/bin/activate
  eval "$(tidings clients create demo --scope notify --env)"
  tidings notify alice '{{"text": "Hello from tidings"}}'
""",
        err=True,
    )


@main.group()
def clients() -> None:
    """Manage OAuth2 clients of the service API."""


@clients.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help=f"Scope to grant; repeat or separate with commas ({', '.join(sorted(SCOPES))}).",
)
@click.option("--env", "as_env", is_flag=True, help="Print shell exports instead of JSON.")
@store_option
def clients_create(name: str, scopes: tuple[str, ...], as_env: bool, store: str | None) -> None:
    """Create a client; prints its client_id and client_secret (shown only once)."""
    settings = _settings(store=store)
    try:
        wanted = parse_scopes(" ".join(scopes))
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--scope") from None
    client, secret = _run(_with_store(settings.store, lambda s: create_client(s, name, wanted)))
    if as_env:
        click.echo(f"export TIDINGS_CLIENT_ID={client.client_id}")
        click.echo(f"export TIDINGS_CLIENT_SECRET={secret}")
        return
    _echo_json(
        {
            "client_id": client.client_id,
            "client_secret": secret,
            "name": client.name,
            "scopes": sorted(client.scopes),
        }
    )


@clients.command("list")
@store_option
def clients_list(store: str | None) -> None:
    """List clients (never their secrets)."""
    settings = _settings(store=store)
    found = _run(_with_store(settings.store, lambda s: s.list_clients()))
    _echo_json(
        [
            {
                "client_id": c.client_id,
                "name": c.name,
                "scopes": sorted(c.scopes),
                "created_at": c.created_at.isoformat(),
            }
            for c in found
        ]
    )


@clients.command("delete")
@click.argument("client_id")
@store_option
def clients_delete(client_id: str, store: str | None) -> None:
    """Delete a client; it can get no new tokens (issued ones expire on their own)."""
    settings = _settings(store=store)
    if not _run(_with_store(settings.store, lambda s: s.delete_client(client_id))):
        raise click.ClickException(f"no client {client_id!r}")
    click.echo(f"deleted {client_id}")


async def _device_authenticator(settings: Settings) -> JwtAuthenticator:
    from tidings.core.tidings import DEVICE_KEY, _random_key

    secret = settings.jwt_secret
    if secret is None:
        secret = await _with_store(
            settings.store, lambda s: s.get_or_create_key(DEVICE_KEY, _random_key)
        )
    return JwtAuthenticator(secret, audience=settings.jwt_audience, issuer=settings.jwt_issuer)


@main.command()
@click.argument("user_id")
@click.option("--ttl", type=int, default=86400, show_default=True, help="Lifetime in seconds.")
@store_option
def token(user_id: str, ttl: int, store: str | None) -> None:
    """Print a device JWT for USER_ID, signed with the configured secret.

    The secret is TIDINGS_JWT_SECRET, or else the one the server generated in its store.
    """
    settings = _settings(store=store)
    authenticator = _run(_device_authenticator(settings))
    click.echo(authenticator.issue(user_id, ttl=ttl))


url_option = click.option(
    "--url",
    envvar="TIDINGS_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of the tidings server.",
)


@main.command()
@click.argument("user_id")
@click.argument("data")
@url_option
@click.option("--client-id", envvar="TIDINGS_CLIENT_ID", required=True)
@click.option("--client-secret", envvar="TIDINGS_CLIENT_SECRET", required=True)
@click.option("--notification-id", help="Idempotency key.")
def notify(
    user_id: str,
    data: str,
    url: str,
    client_id: str,
    client_secret: str,
    notification_id: str | None,
) -> None:
    """Send a notification with DATA (JSON; plain text becomes {"text": …}) to USER_ID."""
    from tidings.client import TidingsClient

    try:
        payload: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = {"text": data}

    async def send() -> dict[str, Any]:
        async with TidingsClient(url, client_id, client_secret, scope="notify") as client:
            return await client.notify(user_id, payload, notification_id=notification_id)

    _echo_json(_run(send()))


@main.command()
@click.argument("user_id", required=False)
@url_option
@click.option("--token", "device_token", envvar="TIDINGS_TOKEN", help="Device JWT.")
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
    settings = _settings(store=store)
    if not device_token:
        assert user_id is not None
        device_token = _run(_device_authenticator(settings)).issue(user_id)
    ws_url = url.replace("http", "ws", 1).rstrip("/")
    ws_url = ws_url if ws_url.endswith("/ws") else ws_url + "/ws"
    with contextlib.suppress(KeyboardInterrupt):
        _run(_listen(ws_url, device_token, session_id, mark_seen, once))


async def _listen(
    url: str, token: str, session_id: str | None, mark_seen: bool, once: bool
) -> None:
    from tidings.client import DeviceClient

    connection_id: str | None = None
    delay = 0.5
    while True:
        device = DeviceClient(url, token=token, session_id=session_id, connection_id=connection_id)
        try:
            welcome = await device.connect()
        except (OSError, ClientError) as exc:
            if isinstance(exc, ClientError) and exc.status == 401:
                raise
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
