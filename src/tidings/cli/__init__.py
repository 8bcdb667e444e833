"""The ``tidings`` command: serve, manage clients, mint device tokens, notify, listen.

An error is one line that names the setting or the fix, never a traceback."""

from __future__ import annotations

import click

from tidings.cli import clients, device, serving
from tidings.version import __version__


@click.group()
@click.version_option(__version__, prog_name="tidings")
def main() -> None:
    """tidings: push notifications for Python applications."""


main.add_command(serving.serve)
main.add_command(serving.worker)
main.add_command(clients.clients)
main.add_command(clients.token)
main.add_command(device.notify)
main.add_command(device.listen)

__all__ = ["main"]
