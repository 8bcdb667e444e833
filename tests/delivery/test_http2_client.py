"""The push channels' HTTP/2 client against a server nobody here wrote (hypercorn, TLS with
ALPN): multiplexing past the server's stream limit, flow control, GOAWAY after a number of
requests, timeouts, and servers that cannot be used."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from support.fake_apns import TlsFiles, make_tls_files
from tidings.delivery.channels.http2 import Http2Client, Http2Error


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the request: its body, and the HTTP version, path and body size as headers;
    ``/slow`` answers after a second."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    await send(
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [
                (b"x-version", scope["http_version"].encode()),
                (b"x-path", scope["path"].encode()),
                (b"x-size", str(len(body)).encode()),
                (b"retry-after", b"7"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def hypercorn(
    tmp_path: Path, port: int = 0, **settings: Any
) -> AsyncIterator[tuple[str, ssl.SSLContext]]:
    """A hypercorn server on TLS (its CA and certificate in ``tmp_path``); yields its URL and
    a client context trusting its CA."""
    tls = TlsFiles(*(tmp_path / n for n in ("ca.pem", "server.pem", "server.key")))
    if not tls.ca_path.exists():
        tls = make_tls_files(tmp_path)
    port = port or free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = str(tls.cert_path), str(tls.key_path)
    config.alpn_protocols = ["h2"]
    config.accesslog = config.errorlog = None
    config.graceful_timeout = 0.5
    for name, value in settings.items():
        setattr(config, name, value)
    stop = asyncio.Event()
    server = asyncio.create_task(serve(cast(Any, app), config, shutdown_trigger=stop.wait))
    for _ in range(100):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        await asyncio.sleep(0.05)
    context = ssl.create_default_context(cafile=str(tls.ca_path))
    try:
        yield f"https://127.0.0.1:{port}", context
    finally:
        stop.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(server, 5)


async def test_requests_share_one_connection_past_the_servers_stream_limit(
    tmp_path: Path,
) -> None:
    async with hypercorn(tmp_path, h2_max_concurrent_streams=5) as (url, context):
        client = Http2Client(url, context, timeout=10)
        answers = await asyncio.gather(
            *(client.post(f"/n/{n}", [(b"x-n", str(n).encode())], b"%d" % n) for n in range(60))
        )
        assert [a.status for a in answers] == [201] * 60
        assert [a.body for a in answers] == [b"%d" % n for n in range(60)]
        assert {a.headers["x-version"] for a in answers} == {"2"}
        assert [a.headers["x-path"] for a in answers] == [f"/n/{n}" for n in range(60)]
        assert answers[0].headers["retry-after"] == "7"
        connection = client._connection
        await client.post("/again", [], b"")
        assert client._connection is connection  # the same connection, reused
        await client.close()


async def test_a_body_larger_than_the_flow_control_window_arrives_whole(tmp_path: Path) -> None:
    async with hypercorn(tmp_path) as (url, context):
        client = Http2Client(url, context, timeout=10)
        body = bytes(range(256)) * 1024  # 256 KiB: four times the initial window
        answers = await asyncio.gather(*(client.post("/big", [], body) for _ in range(3)))
        assert [a.headers["x-size"] for a in answers] == [str(len(body))] * 3
        assert all(a.body == body for a in answers)
        await client.close()


async def test_requests_go_on_after_the_server_ends_connections_with_goaway(
    tmp_path: Path,
) -> None:
    # hypercorn sends GOAWAY after keep_alive_max_requests requests on a connection, then
    # closes it without answering some it announced it would take: those are sent again on
    # a new connection, none is lost.
    async with hypercorn(tmp_path, keep_alive_max_requests=7, keep_alive_timeout=0.3) as (
        url,
        context,
    ):
        client = Http2Client(url, context, timeout=10)
        connections = set()
        for round_ in range(4):
            answers = await asyncio.gather(
                *(client.post(f"/r/{round_}/{n}", [], b"x") for n in range(5)),
                return_exceptions=True,
            )
            assert [getattr(a, "status", a) for a in answers] == [201] * 5
            connections.add(id(client._connection))
        assert len(connections) > 1
        await client.close()


async def test_no_answer_in_time_is_an_error_and_the_connection_stays_usable(
    tmp_path: Path,
) -> None:
    async with hypercorn(tmp_path) as (url, context):
        client = Http2Client(url, context, timeout=0.3)
        with pytest.raises(Http2Error, match=r"no answer within 0\.3 s"):
            await client.post("/slow", [], b"")
        connection = client._connection
        assert (await client.post("/fast", [], b"ok")).body == b"ok"
        assert client._connection is connection
        await client.close()


async def test_a_server_without_http2_is_refused(tmp_path: Path) -> None:
    async with hypercorn(tmp_path, alpn_protocols=["http/1.1"]) as (url, context):
        client = Http2Client(url, context, timeout=5)
        with pytest.raises(Http2Error, match="does not speak HTTP/2"):
            await client.post("/", [], b"")


async def test_an_untrusted_certificate_and_a_closed_port_are_errors(tmp_path: Path) -> None:
    async with hypercorn(tmp_path) as (url, _):
        client = Http2Client(url, ssl.create_default_context(), timeout=5)
        with pytest.raises(Http2Error, match="CERTIFICATE_VERIFY_FAILED"):
            await client.post("/", [], b"")
    closed = Http2Client(f"https://127.0.0.1:{free_port()}", None, timeout=5)
    with pytest.raises(Http2Error, match="cannot connect"):
        await closed.post("/", [], b"")


async def test_a_restarted_server_is_reached_on_a_new_connection(tmp_path: Path) -> None:
    async with hypercorn(tmp_path) as (url, context):
        client = Http2Client(url, context, timeout=5)
        assert (await client.post("/", [], b"1")).status == 201
    with pytest.raises(Http2Error):  # the server is gone
        await client.post("/", [], b"2")
    port = int(url.rsplit(":", 1)[1])
    async with hypercorn(tmp_path, port):  # back, on the same port with the same files
        assert (await client.post("/", [], b"3")).body == b"3"
        await client.close()


def test_only_http_urls_are_taken() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Http2Client("ftp://example.com", None, timeout=1)
