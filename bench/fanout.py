"""Fan-out: one topic, N subscribers, messages published back-to-back; delivered messages per
second and publish-to-receive latency, for tidings and its peers in the same run.

    bash bench/setup.sh                      # once: the peers and the picows load generator
    python bench/fanout.py --subscribers 1000 --messages 1000
    python bench/fanout.py --subscribers 1000 --messages 1000 --slow 10 --servers tidings

Every server is driven by the same harness: picows WebSocket clients (the socket.io protocol is
spoken directly, no client library), spread over several processes, and one publisher sending
``POST /publish`` requests with up to ``--inflight`` in flight. tidings persists every message
(SQLite) before answering; the peers keep nothing. ``--slow N`` adds N subscribers that stop
reading once subscribed and read again once the others are done: the others' rate shows whether
they stall anyone, and the table says what the slow ones got and how they ended (tidings closes
one with 1013 once its queue of 1,024 frames is full; ``--pad`` makes messages big enough for
that to happen before the kernel's socket buffers absorb everything).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))
import contextlib

from common import free_port, percentile, save, service_token, start_tidings, stop
from loadgen import Client, open_client, open_many

from tidings.auth.jwt import JwtAuthenticator

SECRET = "bench-secret-" + "z" * 40
TOPIC = "pet"
PEERS = Path(__file__).parent / "peers"
SERVERS = ("tidings", "python-socketio", "node-socketio", "node-ws")


# Subscribers, one protocol each


async def tidings_subscriber(url: str, index: int) -> Client:
    token = JwtAuthenticator(SECRET).issue(f"sub-{index}")
    client = await open_client(url, {"Authorization": f"Bearer {token}"})
    await client.expect(b'{"type":"welcome"')
    client.send(orjson.dumps({"type": "subscribe", "id": 1, "topics": [TOPIC]}))
    await client.expect(b'{"type":"reply"')
    return client


def tidings_payload(message: bytes) -> Any:
    if message.startswith(b'{"type":"topicMessage"'):
        return orjson.loads(message)["data"]
    return None


async def socketio_subscriber(url: str, index: int) -> Client:
    client = await open_client(url)
    await client.expect(b"0")  # engine.io open
    client.send("40")
    await client.expect(b"40")  # namespace connected
    client.send(f'42["join","{TOPIC}"]')
    await client.expect(b'42["joined"')
    return client


def socketio_payload(message: bytes) -> Any:
    if message.startswith(b'42["msg"'):
        return orjson.loads(message[2:])[1]
    return None


async def ws_subscriber(url: str, index: int) -> Client:
    client = await open_client(url)
    await client.expect(b'{"type":"welcome"')
    return client


PROTOCOLS = {
    "tidings": (tidings_subscriber, tidings_payload),
    "python-socketio": (socketio_subscriber, socketio_payload),
    "node-socketio": (socketio_subscriber, socketio_payload),
    "node-ws": (ws_subscriber, tidings_payload),
}


async def subscribe_and_listen(
    kind: str, url: str, indices: list[int], expected: int, slow: int, ready: Any
) -> dict[str, Any]:
    open_one, payload_of = PROTOCOLS[kind]
    sockets, _ = await open_many(len(indices), lambda i: open_one(url, indices[i]))
    laggards, _ = await open_many(slow, lambda i: open_one(url, 10_000_000 + indices[0] + i))
    for client in laggards:
        client.pause()
    ready.put(len(sockets))
    latencies: list[float] = []
    last = 0.0
    pending = len(sockets)
    finished = asyncio.get_running_loop().create_future()
    got: dict[int, int] = {}

    def on_text(client: Client, message: bytes) -> None:
        nonlocal last, pending
        data = payload_of(message)
        if data is None:
            return
        now = time.time()
        latencies.append(now - data["t"])
        last = now
        n = got[id(client)] = got.get(id(client), 0) + 1
        if n == expected:
            pending -= 1
            if not pending and not finished.done():
                finished.set_result(None)

    for client in sockets:
        client.on_text = on_text
    if sockets:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished, 180)
    # The slow ones read again: each either gets everything, or (tidings) the close 1013 it
    # was sent when its queue overflowed, after what was queued before.
    slow_got = 0

    def count_slow(client: Client, message: bytes) -> None:
        nonlocal slow_got
        if payload_of(message) is not None:
            slow_got += 1

    for client in laggards:
        client.on_text = count_slow
        client.resume()
    deadline = time.monotonic() + 20
    while laggards and time.monotonic() < deadline and slow_got < expected * len(laggards):
        if all(c.closed.done() for c in laggards):
            break
        await asyncio.sleep(0.1)
    slow_codes = [c.close_code for c in laggards]
    for client in (*sockets, *laggards):
        client.close()
    return {
        "latencies": latencies,
        "last": last,
        "slow_codes": slow_codes,
        "slow_received": slow_got,
    }


def worker(
    kind: str, url: str, indices: list[int], expected: int, slow: int, ready: Any, out: Any
) -> None:
    import uvloop

    out.put(uvloop.run(subscribe_and_listen(kind, url, indices, expected, slow, ready)))


# Servers


def start_server(
    kind: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], str, str, dict[str, str]]:
    """Returns (process, subscriber URL, publish URL, publish headers)."""
    port = free_port()
    if kind == "tidings":
        proc = start_tidings(
            {"TIDINGS_STORE": f"sqlite:///{workdir}/fanout.db", "TIDINGS_JWT_SECRET": SECRET},
            port,
            workdir / "tidings.log",
        )
        token = service_token(
            f"sqlite:///{workdir}/fanout.db", f"http://127.0.0.1:{port}", "publish"
        )
        return (
            proc,
            f"ws://127.0.0.1:{port}/ws",
            f"http://127.0.0.1:{port}/publish",
            {"Authorization": f"Bearer {token}"},
        )
    if kind == "python-socketio":
        cmd = [sys.executable, str(PEERS / "socketio_server.py"), str(port)]
    elif kind == "node-socketio":
        cmd = ["node", str(PEERS / "socketio_server.js"), str(port)]
    else:
        cmd = ["node", str(PEERS / "ws_server.js"), str(port)]
    log = (workdir / f"{kind}.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    path = "/" if kind == "node-ws" else "/socket.io/?EIO=4&transport=websocket"
    return proc, f"ws://127.0.0.1:{port}{path}", f"http://127.0.0.1:{port}/publish", {}


async def publish_all(
    url: str, headers: dict[str, str], messages: int, inflight: int, pad: int = 0
) -> float:
    """Back-to-back publishes with up to ``inflight`` in flight (aiohttp: httpx was the
    bottleneck near 360 requests/s)."""
    import aiohttp

    gate = asyncio.Semaphore(inflight)
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> None:
            async with gate:
                data = {"t": time.time(), "i": i, **({"pad": "x" * pad} if pad else {})}
                body = orjson.dumps({"topic": TOPIC, "data": data})
                async with http.post(
                    url, data=body, headers={**headers, "Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    response.raise_for_status()

        started = time.time()
        await asyncio.gather(*(one(i) for i in range(messages)))
    return started


def run(
    kind: str,
    subscribers: int,
    messages: int,
    workers: int,
    inflight: int,
    slow: int,
    pad: int = 0,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"fanout-{kind}-"))
    proc, sub_url, pub_url, headers = start_server(kind, workdir)
    try:
        ready: Any = multiprocessing.Queue()
        out: Any = multiprocessing.Queue()
        chunks = [list(range(subscribers))[i::workers] for i in range(workers)]
        slows = [slow // workers + (1 if i < slow % workers else 0) for i in range(workers)]
        procs = [
            multiprocessing.Process(target=worker, args=(kind, sub_url, c, messages, n, ready, out))
            for c, n in zip(chunks, slows, strict=True)
        ]
        for p in procs:
            p.start()
        connected = sum(ready.get(timeout=300) for _ in procs)
        time.sleep(0.5)
        started = asyncio.run(publish_all(pub_url, headers, messages, inflight, pad))
        results = [out.get(timeout=300) for _ in procs]
        for p in procs:
            p.join()
    finally:
        stop(proc)
    latencies = sorted(x for r in results for x in r["latencies"])
    last = max(r["last"] for r in results)
    expected = connected * messages
    elapsed = last - started if latencies else float("nan")
    codes = [c for r in results for c in r["slow_codes"]]
    slow_received = sum(r["slow_received"] for r in results)

    def pct(p: float) -> float | None:
        value = percentile(latencies, p)
        return None if value is None else round(value * 1000, 1)

    return {
        "server": kind,
        "subscribers": connected,
        "messages": messages,
        "delivered": len(latencies),
        "lost": expected - len(latencies),
        "seconds": round(elapsed, 2),
        "delivered_per_second": round(len(latencies) / elapsed) if latencies else 0,
        "latency_p50_ms": pct(0.5),
        "latency_p99_ms": pct(0.99),
        "slow": len(codes),
        "slow_received": f"{slow_received}/{len(codes) * messages}" if codes else "-",
        "slow_closed": ",".join(sorted({str(c) for c in codes if c is not None})) or "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--slow", type=int, default=0, help="subscribers that stop reading")
    parser.add_argument("--pad", type=int, default=0, help="bytes of padding per message")
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    rows = [
        run(
            kind,
            args.subscribers,
            args.messages,
            args.workers,
            args.inflight,
            args.slow,
            args.pad,
        )
        for kind in args.servers.split(",")
    ]
    base = {r["server"]: r["delivered_per_second"] for r in rows}
    columns = list(rows[0])
    print("  ".join(f"{c:>15}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>15}" for c in columns))
    if "tidings" in base:
        for name, rate in base.items():
            if name != "tidings" and rate:
                print(f"tidings / {name}: {base['tidings'] / rate:.2f}x delivered msg/s")
    path = save("fanout", {"scenario": "fanout", "args": vars(args), "rows": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
