"""The ASGI endpoint and session loop on a real node, driven by ASGI messages: each node counts
its own sockets, frames and errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from tidings import Tidings
from tidings.auth.jwt import JwtAuthenticator


class Socket:
    """One ASGI WebSocket connection: what the client sends in, what the gateway sends out."""

    def __init__(self, query: str) -> None:
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "scheme": "ws",
            "path": "/ws",
            "headers": [],
            "query_string": query.encode(),
        }
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        await self.outbox.put(message)

    async def frame(self) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.outbox.get(), 5)
            if message["type"] == "websocket.send":
                parsed: dict[str, Any] = orjson.loads(message["text"])
                return parsed

    def say(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else orjson.dumps(frame).decode()
        self.inbox.put_nowait({"type": "websocket.receive", "text": text})


async def test_each_node_counts_its_own_sockets_and_frames(tmp_path: Path) -> None:
    """A socket, a frame and a bad frame on node A are counted by A's counters, not B's."""
    async with (
        Tidings(store=f"sqlite:///{tmp_path}/a.db", jwt_secret="s" * 40) as a,
        Tidings(store=f"sqlite:///{tmp_path}/b.db", jwt_secret="s" * 40) as b,
    ):
        assert isinstance(a.authenticator, JwtAuthenticator)
        token = a.authenticator.issue("alice", ttl=60)
        socket = Socket(f"access_token={token}")
        served = asyncio.create_task(a.gateway(socket.scope, socket.receive, socket.send))
        assert (await asyncio.wait_for(socket.outbox.get(), 5))["type"] == "websocket.accept"
        assert (await socket.frame())["type"] == "welcome"
        assert (await socket.frame())["type"] == "newNotificationCountChanged"
        socket.say({"type": "getUnseen", "id": 1})
        assert (await socket.frame())["id"] == 1
        socket.say("{not json")
        assert (await socket.frame())["type"] == "error"
        socket.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(served, 5)
        assert a.counters.connections_opened == 1
        assert a.counters.frames_in == 2
        assert sum(a.counters.errors.values()) == 1
        assert (b.counters.connections_opened, b.counters.frames_in) == (0, 0)
        assert not b.counters.errors


async def test_a_refused_token_is_answered_at_the_handshake(tmp_path: Path) -> None:
    """A forged token gets 4401 (no HTTP answer offered by this server) and no socket."""
    async with Tidings(store=f"sqlite:///{tmp_path}/a.db", jwt_secret="s" * 40) as a:
        socket = Socket("access_token=x.y.z")
        await asyncio.wait_for(a.gateway(socket.scope, socket.receive, socket.send), 5)
        message = socket.outbox.get_nowait()
        assert (message["type"], message["code"]) == ("websocket.close", 4401)
        assert a.counters.connections_opened == 0
