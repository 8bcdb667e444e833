"""The ``tidings`` command: serve, manage clients, mint device tokens, notify, listen.

An error is one line that names the setting or the fix, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from tidings.auth.jwt import JwtAuthenticator
from tidings.auth.oauth import SCOPES, create_client, parse_scopes
from tidings.config import Settings, load_settings
from tidings.core.limits import MAX_USER_ID_LENGTH
from tidings.core.models import ServiceClient
from tidings.errors import ClientError, ConfigurationError, StoreUnavailable, TidingsError
from tidings.logs import configure, safe_url
from tidings.storage import Store, create_store
from tidings.storage.sqlite import SqliteStore
from tidings.version import __version__

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


@click.group()
@click.version_option(__version__, prog_name="tidings")
def main() -> None:
    """tidings: push notifications for Python applications."""


@main.command()
@setting_option("--host", setting="host", help="Interface to bind.")
@setting_option("--port", setting="port", help="Port.", metavar="INTEGER")
@store_option
@bus_option
@node_option
@log_option
@click.option("--banner/--no-banner", default=False, help="Print how to try it out.")
@setting_option(
    "--demo/--no-demo", setting="demo", default=None, help="Serve the demo inbox (not in prod)."
)
def serve(
    host: str | None,
    port: str | None,
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
@bus_option
@node_option
@setting_option("--workers", setting="workers", help="Worker loops.", metavar="INTEGER")
@log_option
def worker(
    store: str | None,
    bus: str | None,
    node_id: str | None,
    workers: str | None,
    log_level: str,
) -> None:
    """Send pipeline deliveries, without serving devices or the API, until SIGTERM."""
    settings = _settings(store=store, bus=bus, node_id=node_id, workers=workers)
    if settings.workers < 1:
        raise click.UsageError("a worker process needs --workers 1 or more")
    from tidings.server import run_worker

    configure(log_level, settings.log_format)
    _run(run_worker(settings))


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
  tidings listen bob --mark-seen              # a device of user 'bob' (the demo is alice)
Then from a third:
  . .venv/bin/activate
  eval "$(tidings clients create demo --scope notify --env)"
  tidings notify bob '{{"text": "Hello from tidings"}}'
""",
        err=True,
    )


# The store, for the commands that use it


class StoreRef:
    """The store a command uses (not started) and where it is, for messages."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.store
        try:
            self.store: Store = create_store(self.url)
        except ConfigurationError as exc:
            raise click.ClickException(f"TIDINGS_STORE (--store): {exc}") from None
        self.path: str | None = None
        self.where = safe_url(self.url)
        if isinstance(self.store, SqliteStore) and not self.store.memory:
            self.path = self.where = os.path.abspath(self.store.path)
            if not os.path.isabs(self.store.path):
                self.where += f" ({self.url} is relative to this folder, {os.getcwd()})"
        self.missing = self.path is not None and not os.path.exists(self.path)

    def require(self, fix: str) -> StoreRef:
        """Refuse a SQLite file that does not exist instead of creating an empty store: in the
        wrong folder that new store would hold a new secret and no clients."""
        if self.missing:
            raise click.ClickException(f"no store at {self.where}; {fix}")
        return self

    def run(self, fn: Callable[[Store], Awaitable[T]]) -> T:
        async def use() -> T:
            try:
                await self.store.start()
            except TidingsError:
                raise
            except Exception as exc:  # a driver's own (a missing database, refused login)
                raise StoreUnavailable(f"cannot open the store {self.where}: {exc}") from exc
            try:
                return await fn(self.store)
            finally:
                await self.store.close()

        return _run(use())


TO_THE_SERVERS_STORE = (
    "run this in the folder where `tidings serve` runs, or point --store / TIDINGS_STORE at "
    "its store (e.g. --store sqlite:////srv/tidings/tidings.db)"
)
TO_THE_SERVERS_SECRET = TO_THE_SERVERS_STORE + ", or set TIDINGS_JWT_SECRET to the server's secret"


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
@click.option("--replace", is_flag=True, help="Delete the clients of the same name.")
@store_option
def clients_create(
    name: str, scopes: tuple[str, ...], as_env: bool, replace: bool, store: str | None
) -> None:
    """Create a client; prints its client_id and client_secret (shown only once).

    Names are labels: a second client of a name is created beside the first (with a warning),
    unless --replace deletes the first.
    """
    if not name.strip():
        raise click.BadParameter("must not be empty", param_hint="NAME")
    try:
        wanted = parse_scopes(" ".join(scopes))
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--scope") from None
    ref = StoreRef(_settings(store=store))
    new_store = ref.missing  # before the store is opened, which creates it

    async def create(s: Store) -> tuple[ServiceClient, str, list[str]]:
        namesakes = [c.client_id for c in await s.list_clients() if c.name == name]
        client, secret = await create_client(s, name, wanted)
        if replace:
            for client_id in namesakes:
                await s.delete_client(client_id)
        return client, secret, namesakes

    client, secret, namesakes = ref.run(create)
    notes = [f"created a new store at {ref.where}: serve it to use the client"] if new_store else []
    if namesakes:
        notes.append(
            f"deleted the earlier {name!r}: {', '.join(namesakes)}"
            if replace
            else f"{name!r} also names {', '.join(namesakes)}; remove one with `tidings clients "
            "delete CLIENT_ID` (see `tidings clients list`), or create with --replace"
        )
    for note in notes:
        click.echo(f"note: {note}", err=True)
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
    ref = StoreRef(_settings(store=store)).require(TO_THE_SERVERS_STORE)
    found = ref.run(lambda s: s.list_clients())
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
    ref = StoreRef(_settings(store=store)).require(TO_THE_SERVERS_STORE)
    if not ref.run(lambda s: s.delete_client(client_id)):
        raise click.ClickException(f"no client {client_id!r} (see `tidings clients list`)")
    click.echo(f"deleted {client_id}")


def _device_signer(settings: Settings) -> tuple[JwtAuthenticator, str]:
    """The authenticator signing device tokens, and where its secret comes from."""
    from tidings.node.tidings import DEVICE_KEY, _random_key

    secret = settings.jwt_secret
    source = "TIDINGS_JWT_SECRET"
    if secret is None:
        ref = StoreRef(settings).require(TO_THE_SERVERS_SECRET)
        secret = ref.run(lambda s: s.get_or_create_key(DEVICE_KEY, _random_key))
        source = f"the secret of the store {ref.where}"
    signer = JwtAuthenticator(secret, audience=settings.jwt_audience, issuer=settings.jwt_issuer)
    return signer, source


def _user_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not 0 < len(value.strip()) <= MAX_USER_ID_LENGTH:
        raise click.BadParameter(f"must be 1 to {MAX_USER_ID_LENGTH} characters, e.g. alice")
    return value


@main.command()
@click.argument("user_id", callback=_user_id)
@click.option("--ttl", type=int, default=86400, show_default=True, help="Lifetime in seconds.")
@store_option
def token(user_id: str, ttl: int, store: str | None) -> None:
    """Print a device JWT for USER_ID, signed with the configured secret.

    The secret is TIDINGS_JWT_SECRET, or else the one the server generated in its store.
    """
    signer, _ = _device_signer(_settings(store=store))
    click.echo(signer.issue(user_id, ttl=ttl))


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


@main.command()
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


@main.command()
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
        signer, source = _device_signer(_settings(store=store))
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
