"""`tidings clients …` and `tidings token`: service clients and device tokens."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import click

from tidings.auth.jwt import JwtAuthenticator
from tidings.auth.oauth import SCOPES, create_client, parse_scopes
from tidings.cli.options import T, _echo_json, _run, _settings, _user_id, store_option
from tidings.config import Settings
from tidings.core.models import ServiceClient
from tidings.errors import ConfigurationError, StoreUnavailable, TidingsError
from tidings.logs import safe_url
from tidings.storage import Store, create_store
from tidings.storage.sqlite import SqliteStore


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


@click.group()
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


def device_signer(settings: Settings) -> tuple[JwtAuthenticator, str]:
    """The authenticator signing device tokens, and where its secret comes from."""
    from tidings.node.auth import DEVICE_KEY, random_key

    secret = settings.jwt_secret
    source = "TIDINGS_JWT_SECRET"
    if secret is None:
        ref = StoreRef(settings).require(TO_THE_SERVERS_SECRET)
        secret = ref.run(lambda s: s.get_or_create_key(DEVICE_KEY, random_key))
        source = f"the secret of the store {ref.where}"
    signer = JwtAuthenticator(secret, audience=settings.jwt_audience, issuer=settings.jwt_issuer)
    return signer, source


@click.command()
@click.argument("user_id", callback=_user_id)
@click.option("--ttl", type=int, default=86400, show_default=True, help="Lifetime in seconds.")
@store_option
def token(user_id: str, ttl: int, store: str | None) -> None:
    """Print a device JWT for USER_ID, signed with the configured secret.

    The secret is TIDINGS_JWT_SECRET, or else the one the server generated in its store.
    """
    signer, _ = device_signer(_settings(store=store))
    click.echo(signer.issue(user_id, ttl=ttl))
