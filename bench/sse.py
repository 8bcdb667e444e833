"""Server-Sent Events beside WebSocket, on one server in one run: idle memory per connection,
and fan-out of topic messages to subscribers.

    python bench/sse.py
    python bench/sse.py --idle 4000 --subscribers 1000 --messages 200

The same bare asyncio client speaks both transports (an HTTP request held open for a stream; a
WebSocket handshake by hand, then its frames), so the figures differ by the server only.
Memory is the growth of the server's resident set from a warm baseline (50 connections) to
``--idle`` more, divided by them. Fan-out: ``--subscribers`` connections of each transport
follow one topic (a stream subscribes by ``POST /sse/frames``), ``--messages`` are published
by ``POST /publish``; the time until every subscriber has every message gives messages
delivered per second, and the server's CPU seconds meanwhile (from /proc) the cost of each.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, report, service_token, start_tidings, stop

from tidings.auth.jwt import JwtAuthenticator

SECRET = "bench-sse-secret-" + "q" * 40
MARK = b'"type":"topicMessage"'


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """One connection of either transport, counting the topic messages it receives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = 0
        self.head = b""
        self.connection_id = ""
        self.task: asyncio.Task[None] | None = None

    async def welcome(self) -> None:
        """Read until the welcome frame (its connection id is the stream's)."""
        while b'"type":"welcome"' not in self.head:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError(self.head.decode(errors="replace")[:300])
            self.head += chunk
        start = self.head.index(b'"connection_id":"') + 17
        self.connection_id = self.head[start : self.head.index(b'"', start)].decode()
        self.task = asyncio.create_task(self.count())

    async def count(self) -> None:
        tail = b""
        while chunk := await self.reader.read(65536):
            data = tail + chunk
            self.received += data.count(MARK)
            tail = data[-len(MARK) + 1 :]  # a mark cut between two reads counts once


async def open_stream(port: int, token: str) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    client = Client(reader, writer)
    await client.welcome()
    return client


async def open_socket(port: int, token: str) -> Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    client = Client(reader, writer)
    await client.welcome()
    return client


async def open_many(kind: str, port: int, tokens: list[str]) -> list[Client]:
    opener = open_stream if kind == "sse" else open_socket
    clients: list[Client] = []
    for at in range(0, len(tokens), 200):
        clients += await asyncio.gather(*(opener(port, t) for t in tokens[at : at + 200]))
    return clients


def close_all(clients: list[Client]) -> None:
    for client in clients:
        if client.task is not None:
            client.task.cancel()
        client.writer.close()


async def idle(kind: str, port: int, pid: int, n: int, auth: JwtAuthenticator) -> float:
    warm = await open_many(kind, port, [auth.issue(f"{kind}-warm-{i}") for i in range(50)])
    await asyncio.sleep(1)
    before = rss_kib(pid)
    many = await open_many(kind, port, [auth.issue(f"{kind}-idle-{i}") for i in range(n)])
    await asyncio.sleep(2)
    per = (rss_kib(pid) - before) / n
    close_all(warm + many)
    await asyncio.sleep(2)
    return round(per, 2)


async def fanout(
    kind: str, port: int, pid: int, args: argparse.Namespace, auth: JwtAuthenticator, publish: str
) -> dict[str, float]:
    users = [f"{kind}-fan-{i}" for i in range(args.subscribers)]
    tokens = [auth.issue(u) for u in users]
    clients = await open_many(kind, port, tokens)
    topic = f"bench-{kind}"
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for client, token in zip(clients, tokens, strict=True):
            frame = {"type": "subscribe", "id": 1, "topics": [topic]}
            if kind == "sse":
                answer = await http.post(
                    "/sse/frames",
                    json={"connection_id": client.connection_id, "frames": [frame]},
                    headers={"Authorization": f"Bearer {token}"},
                )
                answer.raise_for_status()
            else:
                client.writer.write(masked(orjson.dumps(frame)))
        await asyncio.sleep(1)  # every subscription answered
        headers = {"Authorization": f"Bearer {publish}"}
        cpu, started = cpu_seconds(pid), time.perf_counter()
        for n in range(args.messages):
            sent = await http.post("/publish", json={"topic": topic, "data": n}, headers=headers)
            sent.raise_for_status()
        want = args.messages
        while sum(min(c.received, want) for c in clients) < want * len(clients):
            if time.perf_counter() - started > 120:
                break
            await asyncio.sleep(0.01)
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
    delivered = sum(min(c.received, want) for c in clients)
    close_all(clients)
    await asyncio.sleep(1)
    return {
        "delivered": delivered,
        "messages_per_s": round(delivered / elapsed),
        "server_cpu_us_per_message": round(cpu / delivered * 1e6, 2) if delivered else 0,
    }


def masked(payload: bytes) -> bytes:
    """A client's text frame (clients mask theirs; this mask is all zeros)."""
    size = len(payload)
    head = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2)
    return head + b"\0\0\0\0" + payload


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tidings-bench-sse-"))
    store = f"sqlite:///{tmp}/sse.db"
    port = free_port()
    env = {
        "TIDINGS_STORE": store,
        "TIDINGS_JWT_SECRET": SECRET,
        "TIDINGS_MAX_CONNECTS_PER_SECOND": "100000",
    }
    server = start_tidings(env, port, tmp / "tidings.log")
    auth = JwtAuthenticator(SECRET)
    try:
        publish = service_token(store, f"http://127.0.0.1:{port}", "publish")
        result: dict[str, Any] = {"scenario": "sse", "idle": args.idle}
        for kind in ("websocket", "sse"):
            result[f"{kind}_idle_kib_per_connection"] = await idle(
                kind, port, server.pid, args.idle, auth
            )
        for kind in ("websocket", "sse"):
            for key, value in (await fanout(kind, port, server.pid, args, auth, publish)).items():
                result[f"{kind}_fanout_{key}"] = value
        return result
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=2000, help="idle connections per transport")
    parser.add_argument("--subscribers", type=int, default=500, help="subscribers per transport")
    parser.add_argument("--messages", type=int, default=200, help="messages published")
    report("sse", asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
