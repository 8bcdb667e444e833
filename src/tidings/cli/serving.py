"""`tidings serve` and `tidings worker`."""

from __future__ import annotations

import click

from tidings.cli.options import (
    _run,
    _settings,
    bus_option,
    log_option,
    node_option,
    setting_option,
    store_option,
)
from tidings.config import Settings
from tidings.errors import TidingsError
from tidings.logs import configure, safe_url
from tidings.version import __version__


@click.command()
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


@click.command()
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
