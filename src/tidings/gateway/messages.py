"""The ASGI messages the gateway sends: accepting or refusing a handshake, close frames, text
frames, plain HTTP answers."""

from __future__ import annotations

from typing import Any

import orjson

from tidings.core.codes import CloseCode
from tidings.gateway.handshake import Refusal, Scope

Message = dict[str, Any]

#: the close code of a refusal when the server cannot answer the handshake with HTTP
_CLOSE_OF_STATUS = {401: CloseCode.UNAUTHORIZED, 400: CloseCode.POLICY_VIOLATION}


def send_text(text: str) -> Message:
    return {"type": "websocket.send", "text": text}


async def close_frame(send: Any, code: CloseCode, reason: str = "") -> None:
    await send({"type": "websocket.close", "code": int(code), "reason": reason})


async def accept(send: Any, headers: list[tuple[bytes, bytes]]) -> None:
    message: Message = {"type": "websocket.accept"}
    if headers:
        message["headers"] = headers
    await send(message)


async def deny(scope: Scope, send: Any, refusal: Refusal) -> None:
    """Refuse the handshake with an HTTP response when the server allows it, else with a
    close frame (4401 for 401, 1008 for 400, 1013 for the others)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = orjson.dumps({"error": refusal.code, "message": refusal.message})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if refusal.status == 401:
            headers.append((b"www-authenticate", b'Bearer error="invalid_token"'))
        if refusal.status == 503:
            headers.append((b"retry-after", b"1"))
        await send(
            {"type": "websocket.http.response.start", "status": refusal.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await close_frame(send, _CLOSE_OF_STATUS.get(refusal.status, CloseCode.TRY_AGAIN_LATER))


async def refuse(send: Any, pending: Scope | None, refusal: Refusal, close_code: CloseCode) -> None:
    """Turn a device away before its ``welcome``: with an HTTP status while the handshake is
    pending, else with ``close_code``."""
    if pending is not None:
        await deny(pending, send, refusal)
    else:
        await close_frame(send, close_code, refusal.message)


async def plain_response(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def release_scope(send: Any) -> None:
    """The handshake is answered and nothing reads its scope again: on tidings' own transport
    (which reads it no more either) let it go, about 2 KiB per idle connection. Other servers
    keep theirs: they may read it later."""
    release = getattr(getattr(send, "__self__", None), "release_scope", None)
    if release is not None:
        release()
