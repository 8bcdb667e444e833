"""An ASGI echo application served by tidings' WebSocket transport the way ``tidings serve``
serves the device gateway, for Autobahn|Testsuite's fuzzing client.

The uvicorn configuration is the one :func:`tidings.server.run` serves with, built by the same
:func:`tidings.server.front_config` (``FrontConfig`` with ``ws=WebSocketProtocol`` in front,
uvicorn's default loop and HTTP protocol, no permessage-deflate, the same head and keep-alive
timeouts and write coalescing) from the same :class:`tidings.config.Settings` and so the same
``TIDINGS_*`` variables, with two changes Autobahn's cases need (:data:`AUTOBAHN_OPTIONS`):
messages of up to 16 MiB, and no keepalive pings. The application differs too: it echoes every
message (Autobahn's cases expect an echo server) instead of speaking the device protocol.

Run it by hand with ``python tests/conformance/echo_server.py --port 9001``.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from tidings.config import Settings
from tidings.gateway.front import FrontConfig, raise_open_file_limit
from tidings.server import front_config

#: what differs from ``tidings serve``'s uvicorn options, and why:
#:
#: - ``ws_max_size``: Autobahn's largest messages are 16 MiB (9.1.6, 9.2.6); ``tidings serve``
#:   allows 4 x ``TIDINGS_MAX_FRAME_SIZE`` (1 MiB by default), past which the transport closes
#:   with 1009 (as it should, but then 9.1.4-9.1.6, 9.2.4-9.2.6, 9.3.x and 9.4.x are not echoed);
#: - ``ws_ping_interval`` off: a keepalive ping of the server is no part of any case, and one
#:   that falls inside a case (a slow 9.x on a busy machine) shows up in its frame trace.
AUTOBAHN_OPTIONS: dict[str, Any] = {
    "ws_max_size": 16 * 1024 * 1024,
    "ws_ping_interval": None,
    "ws_ping_timeout": None,
}


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accept every WebSocket and send each message back as it came (text as text, bytes as
    bytes) until the client leaves; answer anything else 404."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


def serve_config(settings: Settings, *, log_level: str = "warning") -> FrontConfig:
    """The uvicorn config of :func:`tidings.server.run` for ``settings``, around :func:`echo`,
    with :data:`AUTOBAHN_OPTIONS`."""
    raise_open_file_limit()
    return front_config(echo, settings, log_level=log_level, **AUTOBAHN_OPTIONS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    settings = Settings(host=args.host, port=args.port)
    uvicorn.Server(serve_config(settings, log_level=args.log_level)).run()


if __name__ == "__main__":
    main()
