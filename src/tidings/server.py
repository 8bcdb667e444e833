"""The standalone server: one ASGI app (devices on ``/ws``, the HTTP API elsewhere) and
``run()``, which serves it with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

import uvicorn

from tidings.bus import create_bus
from tidings.config import Settings
from tidings.errors import BusError, ConfigurationError, StoreUnavailable, TidingsError
from tidings.logs import safe_url
from tidings.node.app import BATCH_PATH as BATCH_PATH
from tidings.node.app import WS_PATH as WS_PATH
from tidings.node.app import RequestId as RequestId
from tidings.node.app import TidingsApp as TidingsApp
from tidings.node.tidings import Tidings
from tidings.storage import create_store

if TYPE_CHECKING:
    from tidings.gateway.front import FrontConfig

logger = logging.getLogger("tidings")


def create_app(settings: Settings | None = None, **overrides: Any) -> TidingsApp[Tidings]:
    """A complete node as an ASGI app; it starts and closes itself with the ASGI lifespan."""
    return TidingsApp(Tidings(settings, **overrides))


def front_config(
    app: Any, settings: Settings, *, log_level: str = "info", **overrides: Any
) -> FrontConfig:
    """The uvicorn config ``tidings serve`` serves ``app`` with, from ``settings``: tidings'
    transport behind its front door (or the uvicorn WebSocket implementation chosen), the
    keepalive, size, timeout and connection limits, and the fan-out write coalescing. The one
    place these options are set; ``overrides`` replace some (tests/conformance/echo_server.py
    serves Autobahn's cases with it)."""
    from tidings.gateway.front import FrontConfig
    from tidings.gateway.transport import WebSocketProtocol

    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        ws=WebSocketProtocol if settings.ws_protocol == "tidings" else settings.ws_protocol,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_interval,
        # A frame over max_frame_size is answered with an error frame by the gateway; only far
        # larger ones are cut off by the transport (close 1009).
        ws_max_size=max(4 * settings.max_frame_size, 1024 * 1024),
        ws_per_message_deflate=False,
        log_level=log_level,
        log_config=None,  # tidings.logs.configure() set up logging (text or JSON, redacted)
        lifespan="on",
        server_header=False,
        proxy_headers=True,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        timeout_keep_alive=settings.keepalive_timeout,
        head_timeout=settings.head_timeout,
        max_open=settings.max_open_connections or None,
        coalesce_delay=settings.fanout_coalesce_ms / 1000,
    )
    options.update(overrides)
    return FrontConfig(app, **options)


def run(settings: Settings, *, log_level: str = "info") -> None:
    """Serve a node with uvicorn until interrupted."""
    from tidings.gateway.front import raise_open_file_limit

    raise_open_file_limit()
    _check_port(settings)
    app = TidingsApp(build_node(settings))
    config = front_config(app, settings, log_level=log_level)
    # Everything built so far (modules, the app) lives as long as the process: keep it out of
    # the collector's full passes, which otherwise pause the loop for tens of milliseconds.
    gc.freeze()
    gc.set_threshold(700, 10, 100)
    DrainingServer(config, app.tidings).run()


async def run_worker(settings: Settings) -> None:
    """A node that only sends pipeline deliveries, until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = build_node(settings)
    await start_node(node)
    try:
        logger.info(
            "worker %s sending deliveries (store %s)", settings.node_id, safe_url(settings.store)
        )
        await stop.wait()
    finally:
        await node.close()


def build_node(settings: Settings) -> Tidings:
    """The node of ``settings``, its store and bus chosen by URL (not started yet).

    Raises:
        ConfigurationError: a URL has an unknown scheme or needs an extra not installed; the
            message names the setting.
    """
    try:
        store = create_store(settings.store)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"TIDINGS_STORE (--store): {exc}; e.g. TIDINGS_STORE=sqlite:///tidings.db"
        ) from None
    try:
        bus = create_bus(settings.bus)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"TIDINGS_BUS (--bus): {exc}; e.g. TIDINGS_BUS=memory://"
        ) from None
    return Tidings(settings, store=store, bus=bus)


async def start_node(tidings: Tidings) -> None:
    """Open the store, then start the node; a failure is one :class:`TidingsError` line that
    says which setting to look at (the driver's exception is its cause)."""
    settings = tidings.settings
    try:
        await tidings.store.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await tidings.store.close()
        if isinstance(exc, ConfigurationError) and "TIDINGS_STORE" in str(exc):
            # the store named the setting and the fix already
            raise ConfigurationError(f"{exc} ({safe_url(settings.store)})") from exc
        kind = ConfigurationError if isinstance(exc, ConfigurationError) else StoreUnavailable
        raise kind(
            f"cannot open the store {safe_url(settings.store)}: {_reason(exc)}; make sure the "
            "database runs and exists, or point TIDINGS_STORE (--store) at one that does, e.g. "
            "TIDINGS_STORE=postgresql://user:password@host:5432/tidings"
        ) from exc
    try:
        await tidings.start()
    except BusError as exc:
        raise BusError(f"{exc} (TIDINGS_BUS={safe_url(settings.bus)})") from exc
    except TidingsError:
        raise
    except Exception as exc:
        raise TidingsError(f"cannot start the node: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_port(settings: Settings) -> None:
    """Refuse at once a port another process holds: uvicorn would find it only after the node
    started, and log it. The probe binds as uvicorn does (the family by the host's form,
    SO_REUSEADDR), so a port left in TIME_WAIT by a previous run is not taken for busy."""
    if settings.port == 0:
        return
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {settings.host}:{settings.port} ({exc.strerror or exc}); "
                "stop what holds it, or choose another port or interface with --port / "
                "TIDINGS_PORT or --host / TIDINGS_HOST, e.g. TIDINGS_PORT=8001"
            ) from None


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but readiness goes false first: on SIGTERM the node answers /ready
    with 503 and refuses new sockets for ``shutdown_delay`` seconds, then stops accepting,
    closes devices with 1012 (reconnect elsewhere) and drains requests and pipeline sends
    within ``shutdown_timeout``. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, tidings: Tidings) -> None:
        super().__init__(config)
        self.tidings = tidings

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # Started here, in uvicorn's loop but before its lifespan (whose start is then a no-op),
        # a node that cannot start fails with one line instead of uvicorn's logged traceback.
        await start_node(self.tidings)
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        delay = self.tidings.settings.shutdown_delay
        if self.tidings.draining or delay <= 0:
            self.tidings.draining = True
            super().handle_exit(sig, frame)
            return
        self.tidings.draining = True
        logger.warning("draining: /ready answers 503; stopping in %.1f s", delay)
        # The timer's thread only sets uvicorn's exit flag, which its main loop polls.
        timer = threading.Timer(delay, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()
