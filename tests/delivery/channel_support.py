"""Real servers for the channel tests: a scripted SMTP handler for aiosmtpd and a tiny HTTP/1.1
receiver on ``asyncio.start_server`` that records requests and answers as it is told."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

import orjson

from tidings.delivery.channels.base import Outgoing, Rendered


def outgoing(address: Any, channel: str, **changes: Any) -> Outgoing:
    """A delivery as a worker would hand it to a channel."""
    rendered = changes.pop(
        "rendered",
        Rendered(
            text="Your order 42 has shipped.\nIt arrives on Friday.",
            subject="Order shipped",
            html="<p>Your order <b>42</b> has shipped.</p>",
            data={"order": 42},
        ),
    )
    values: dict[str, Any] = {
        "delivery_id": "dlv_0001",
        "message_id": "msg_0001",
        "user_id": "user-7",
        "channel": channel,
        "address": address,
        "rendered": rendered,
        "attempt": 1,
    }
    values.update(changes)
    return Outgoing(**values)


class ScriptedSmtpHandler:
    """An aiosmtpd handler: answers ``250`` unless told otherwise, one scripted reply per
    RCPT or DATA command, and keeps the messages it accepted."""

    def __init__(self) -> None:
        self.rcpt_replies: list[str] = []
        self.data_replies: list[str] = []
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_replies:
            reply = self.rcpt_replies.pop(0)
            if not reply.startswith("250"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            reply = self.data_replies.pop(0)
            if not reply.startswith("250"):
                return reply
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class HttpReceiver:
    """An HTTP/1.1 server on a free loopback port. Each request is recorded and answered with
    the next of ``replies`` (``200`` with no body when none is left); with ``hang`` it reads
    nothing and never answers (also a silent SMTP server)."""

    def __init__(self, *replies: Reply, hang: bool = False) -> None:
        self.replies = list(replies)
        self.hang = hang
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self._port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = asyncio.Event()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HttpReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.hang:
                await self._stopping.wait()
                return
            request = await self._read(reader)
            self.requests.append(request)
            reply = self.replies.pop(0) if self.replies else Reply()
            head = [
                f"HTTP/1.1 {reply.status} {_phrase(reply.status)}",
                f"Content-Length: {len(reply.body)}",
            ]
            head += [f"{key}: {value}" for key, value in reply.headers.items()]
            head.append("Connection: close")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + reply.body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Request:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Request(method, path, headers, body)
