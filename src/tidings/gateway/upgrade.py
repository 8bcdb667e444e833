"""The HTTP side of a WebSocket connection, sans I/O: the upgrade request read into an ASGI
scope, and the HTTP answers (101, or a refusal) as bytes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from tidings.gateway.frames import accept_key, valid_key

Headers = Iterable[tuple[bytes, bytes]]


@dataclass(slots=True)
class Upgrade:
    """A valid upgrade request: its key, its parts for the scope, and the bytes that came
    after its head (frames sent in the same write)."""

    key: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    early: bytes


@dataclass(slots=True)
class Refusal:
    """An upgrade request to answer with an HTTP error."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


class HttpAnswer:
    """An HTTP response an application sends instead of accepting the upgrade (the ASGI
    WebSocket Denial Response extension), gathered as its messages come."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, start: dict[str, Any]) -> None:
        status = start["status"]
        if not 100 <= status < 600:
            raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
        self.status: int = status
        self.headers: list[tuple[bytes, bytes]] = list(start.get("headers", ()))
        self.body = b""

    def add(self, message: dict[str, Any]) -> bool:
        """Add a ``websocket.http.response.body`` message; True once it was the last."""
        self.body += message.get("body", b"")
        return not message.get("more_body", False)

    def encode(self, default_headers: Headers) -> bytes:
        return http_response(self.status, (*default_headers, *self.headers), self.body)


def read_upgrade(request: bytes) -> Upgrade | Refusal:
    """Check an upgrade request (its whole head, and what followed it)."""
    head, _, early = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target = rest.rpartition(b" ")[0]
    headers: list[tuple[bytes, bytes]] = []
    key = version = b""
    upgrade = connection = b""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        headers.append((name, value))
        if name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"upgrade":
            upgrade = value.lower()
        elif name == b"connection":
            connection = value.lower()
    if (
        method != b"GET"
        or b"websocket" not in upgrade
        or b"upgrade" not in connection
        or not valid_key(key)
    ):
        return Refusal(400, b"invalid WebSocket upgrade request\n")
    if version != b"13":
        return Refusal(
            426, b"unsupported WebSocket version\n", ((b"sec-websocket-version", b"13"),)
        )
    return Upgrade(key, target, headers, early)


def websocket_scope(
    upgrade: Upgrade,
    *,
    root_path: str,
    asgi_version: str,
    ssl: bool,
    server: Any,
    client: Any,
    state: dict[str, Any],
) -> dict[str, Any]:
    """The ASGI scope of an upgrade request (ASGI WebSocket spec 2.4)."""
    raw_path, _, query = upgrade.target.partition(b"?")
    subprotocols = [
        token.strip().decode("latin-1")
        for name, value in upgrade.headers
        if name == b"sec-websocket-protocol"
        for token in value.split(b",")
    ]
    return {
        "type": "websocket",
        "asgi": {"version": asgi_version, "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "wss" if ssl else "ws",
        "server": _address(server),
        "client": _address(client),
        "root_path": root_path,
        "path": root_path + unquote(raw_path.decode("latin-1")),
        "raw_path": root_path.encode("ascii") + raw_path,
        "query_string": query,
        "headers": upgrade.headers,
        "subprotocols": subprotocols,
        "state": state,
        "extensions": {"websocket.http.response": {}},
    }


def accept_response(key: bytes, headers: Headers, subprotocol: str | None) -> bytes:
    """The 101 answer to an upgrade request with ``key``."""
    lines = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", accept_key(key)),
        *headers,
    ]
    if subprotocol:
        lines.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
    out = [b"HTTP/1.1 101 Switching Protocols\r\n"]
    out.extend(b"%s: %s\r\n" % (name, value) for name, value in lines)
    out.append(b"\r\n")
    return b"".join(out)


def http_response(status: int, headers: Headers, body: bytes) -> bytes:
    """An HTTP answer that closes the connection (a refused upgrade)."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    out = [b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())]
    names = set()
    for name, value in headers:
        names.add(name.lower())
        out.append(b"%s: %s\r\n" % (name, value))
    if b"content-length" not in names:
        out.append(b"content-length: %d\r\n" % len(body))
    out.append(b"connection: close\r\n\r\n")
    out.append(body)
    return b"".join(out)


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def client_label(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def target_label(scope: dict[str, Any]) -> str:
    query = scope.get("query_string", b"")
    path: str = scope["path"]
    return f"{path}?{query.decode('latin-1')}" if query else path
