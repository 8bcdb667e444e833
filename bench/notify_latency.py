"""Notify latency: U users with 2 devices each; notifications at a fixed rate through
``POST /notify`` (persisted before the answer); latency from the moment the request is sent to
the moment the new count arrives on both devices of the user, and anything lost.

    python bench/notify_latency.py --users 2000 --rate 1000 --seconds 10 [--store URL]
    python bench/notify_latency.py --users 2000 --rate 1000 --seconds 10 --server node-socketio

The load is open-loop: requests are sent on schedule whether or not earlier ones finished.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, percentile, report, service_token, start_tidings, stop
from fanout import start_server as start_peer
from loadgen import Client, open_client, open_many

from tidings.auth.jwt import JwtAuthenticator

SECRET = "bench-secret-" + "z" * 40


async def devices(kind: str, url: str, users: list[int], ready: Any, done: Any) -> list[tuple]:
    """Two devices per user; returns (user, version, received_at) of every count frame (for a
    peer: of every message to the user's room, whose data carries the version)."""
    auth = JwtAuthenticator(SECRET)
    seen: list[tuple] = []
    owners = [u for u in users for _ in range(2)]

    async def open_device(i: int) -> Client:
        user = owners[i]
        if kind == "tidings":
            token = auth.issue(f"user-{user}")
            client = await open_client(url, {"Authorization": f"Bearer {token}"})
            await client.expect(b'{"type":"welcome"')
        else:  # a socket.io peer: the device joins its user's room
            client = await open_client(url)
            await client.expect(b"0")
            client.send("40")
            await client.expect(b"40")
            client.send(f'42["join","user-{user}"]')
            await client.expect(b'42["joined"')

        def on_text(_: Client, message: bytes) -> None:
            if message.startswith(b'{"type":"newNotificationCountChanged"'):
                version = orjson.loads(message)["version"]
            elif message.startswith(b'42["msg"'):
                version = orjson.loads(message[2:])[1]["v"]
            else:
                return
            if version:
                seen.append((user, version, time.time()))

        client.on_text = on_text
        return client

    sockets, _ = await open_many(len(owners), open_device)
    ready.put(len(sockets))
    while not done.is_set():  # noqa: ASYNC110 - a multiprocessing event
        await asyncio.sleep(0.2)
    for client in sockets:
        client.close()
    return seen


def device_worker(kind: str, url: str, users: list[int], ready: Any, done: Any, out: Any) -> None:
    import uvloop

    out.put(uvloop.run(devices(kind, url, users, ready, done)))


async def publish(kind: str, base: str, token: str, users: int, rate: int, seconds: float) -> dict:
    """Open-loop notifies; returns {user: [send times in order]} and errors. A peer gets
    ``POST /publish`` to the user's room instead, with the version in the data.

    aiohttp, not httpx, as the load generator: httpx topped out near 360 requests/s here, far
    below what the server takes (wrk measured 3,600/s on the same endpoint)."""
    import aiohttp

    sent: dict[int, list[float]] = {}
    errors = 0
    interval = 1.0 / rate
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks = []

        async def one(user: int) -> None:
            nonlocal errors
            times = sent.setdefault(user, [])
            times.append(time.time())
            if kind == "tidings":
                path, ok = "/notify", 201
                body = {"user_id": f"user-{user}", "data": {"n": 1}}
            else:
                path, ok = "/publish", 202
                body = {"topic": f"user-{user}", "data": {"v": len(times)}}
            try:
                async with http.post(
                    f"{base}{path}",
                    data=orjson.dumps(body),
                    headers={**headers, "Content-Type": "application/json"},
                ) as response:
                    await response.read()
                    if response.status != ok:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1

        start = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i % users)))
        await asyncio.gather(*tasks)
    return {"sent": sent, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--ws-protocol", default="tidings", help="TIDINGS_WS_PROTOCOL")
    parser.add_argument(
        "--server",
        default="tidings",
        choices=["tidings", "python-socketio", "node-socketio"],
        help="a peer keeps nothing: each notify is a message to the user's room",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tidings-latency-"))
    store = args.store or f"sqlite:///{workdir}/bench.db"
    kind = args.server
    if kind == "tidings":
        port = free_port()
        server = start_tidings(
            {
                "TIDINGS_STORE": store,
                "TIDINGS_JWT_SECRET": SECRET,
                "TIDINGS_WS_PROTOCOL": args.ws_protocol,
            },
            port,
            workdir / "server.log",
        )
        base = f"http://127.0.0.1:{port}"
        ws_url = f"ws://127.0.0.1:{port}/ws"
    else:
        server, ws_url, publish_url, _ = start_peer(kind, workdir)
        base = publish_url.removesuffix("/publish")
    try:
        token = service_token(store, base, "notify") if kind == "tidings" else ""
        ready: Any = multiprocessing.Queue()
        out: Any = multiprocessing.Queue()
        done = multiprocessing.Event()
        users = list(range(args.users))
        procs = [
            multiprocessing.Process(
                target=device_worker,
                args=(kind, ws_url, users[i :: args.workers], ready, done, out),
            )
            for i in range(args.workers)
        ]
        for proc in procs:
            proc.start()
        connected = sum(ready.get(timeout=300) for _ in procs)
        time.sleep(1.0)
        published = asyncio.run(publish(kind, base, token, args.users, args.rate, args.seconds))
        time.sleep(3.0)  # the last counts arrive
        done.set()
        seen = [row for _ in procs for row in out.get(timeout=60)]
        for proc in procs:
            proc.join()
    finally:
        stop(server)

    sent: dict[int, list[float]] = published["sent"]
    latencies = []
    for user, version, received in seen:
        times = sent.get(user, [])
        if 0 < version <= len(times):
            latencies.append(received - times[version - 1])
    latencies.sort()
    expected = 2 * sum(len(v) for v in sent.values())

    def pct(p: float) -> float | None:
        value = percentile(latencies, p)
        return None if value is None else round(value * 1000, 2)

    result = {
        "scenario": "notify_latency",
        "server": kind,
        "store": store.split(":", 1)[0] if kind == "tidings" else "none",
        "users": args.users,
        "devices": connected,
        "rate_per_second": args.rate,
        "seconds": args.seconds,
        "notifications": sum(len(v) for v in sent.values()),
        "http_errors": published["errors"],
        "count_frames_expected": expected,
        "count_frames_received": len(latencies),
        "lost": expected - len(latencies),
        "latency_p50_ms": pct(0.50),
        "latency_p95_ms": pct(0.95),
        "latency_p99_ms": pct(0.99),
        "latency_max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
    }
    report("notify_latency", result)


if __name__ == "__main__":
    main()
