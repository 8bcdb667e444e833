"""Fan-out: one topic, N subscribers, messages published back-to-back; delivered messages per
second and publish-to-receive latency, for tidings and its peers in the same run.

    bash bench/setup.sh                      # once: python-socketio and Node's socket.io
    python bench/fanout.py --subscribers 1000 --messages 200

Every server is driven by the same harness: raw WebSocket clients (the socket.io protocol is
spoken directly, no client library), spread over several processes, and one publisher sending
``POST /publish`` requests with up to ``--inflight`` in flight. tidings persists every message
(SQLite) before answering; the peers keep nothing.
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
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, percentile, save, service_token, start_tidings

from tidings.auth.jwt import JwtAuthenticator

SECRET = "bench-secret-" + "z" * 40
TOPIC = "pet"
PEERS = Path(__file__).parent / "peers"


# Subscribers, one protocol each


async def tidings_subscriber(url: str, index: int) -> ClientConnection:
    token = JwtAuthenticator(SECRET).issue(f"sub-{index}")
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        max_queue=None,
        open_timeout=60,
    )
    await ws.send(orjson.dumps({"type": "subscribe", "id": 1, "topics": [TOPIC]}).decode())
    while orjson.loads(await ws.recv()).get("type") != "reply":
        pass
    return ws


def tidings_payload(message: str | bytes) -> Any:
    frame = orjson.loads(message)
    return frame["data"] if frame.get("type") == "topicMessage" else None


async def socketio_subscriber(url: str, index: int) -> ClientConnection:
    ws = await connect(url, compression=None, max_queue=None, open_timeout=60)
    await ws.recv()  # engine.io open
    await ws.send("40")
    await ws.recv()  # namespace connected
    await ws.send(f'42["join","{TOPIC}"]')
    while not str(await ws.recv()).startswith('42["joined"'):
        pass
    return ws


def socketio_payload(message: str | bytes) -> Any:
    text = message if isinstance(message, str) else message.decode()
    if text.startswith("42"):
        event, data = orjson.loads(text[2:])
        return data if event == "msg" else None
    return None


PROTOCOLS = {
    "tidings": (tidings_subscriber, tidings_payload),
    "python-socketio": (socketio_subscriber, socketio_payload),
    "node-socketio": (socketio_subscriber, socketio_payload),
}


async def subscribe_and_listen(
    kind: str, url: str, indices: list[int], expected: int, ready: Any, go: Any
) -> dict[str, Any]:
    open_one, payload_of = PROTOCOLS[kind]
    gate = asyncio.Semaphore(200)

    async def opened(i: int) -> ClientConnection:
        async with gate:
            return await open_one(url, i)

    sockets = await asyncio.gather(*(opened(i) for i in indices))
    ready.put(len(sockets))
    latencies: list[float] = []
    last = 0.0

    async def listen(ws: ClientConnection) -> None:
        nonlocal last
        got = 0
        try:
            async with asyncio.timeout(120):
                async for message in ws:
                    if message == "2":  # engine.io ping
                        await ws.send("3")
                        continue
                    data = payload_of(message)
                    if data is None:
                        continue
                    now = time.time()
                    latencies.append(now - data["t"])
                    last = max(last, now)
                    got += 1
                    if got == expected:
                        return
        except TimeoutError:
            pass

    await asyncio.gather(*(listen(ws) for ws in sockets))
    for ws in sockets:
        await ws.close()
    return {"latencies": latencies, "last": last}


def worker(kind: str, url: str, indices: list[int], expected: int, ready: Any, out: Any) -> None:
    out.put(asyncio.run(subscribe_and_listen(kind, url, indices, expected, ready, None)))


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
    else:
        cmd = ["node", str(PEERS / "socketio_server.js"), str(port)]
    log = (workdir / f"{kind}.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return (
        proc,
        f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
        f"http://127.0.0.1:{port}/publish",
        {},
    )


async def publish_all(url: str, headers: dict[str, str], messages: int, inflight: int) -> float:
    """Back-to-back publishes with up to ``inflight`` in flight (aiohttp: httpx was the
    bottleneck near 360 requests/s)."""
    import aiohttp

    gate = asyncio.Semaphore(inflight)
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> None:
            async with gate:
                body = orjson.dumps({"topic": TOPIC, "data": {"t": time.time(), "i": i}})
                async with http.post(
                    url, data=body, headers={**headers, "Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    response.raise_for_status()

        started = time.time()
        await asyncio.gather(*(one(i) for i in range(messages)))
    return started


def run(kind: str, subscribers: int, messages: int, workers: int, inflight: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"fanout-{kind}-"))
    proc, sub_url, pub_url, headers = start_server(kind, workdir)
    try:
        ready: Any = multiprocessing.Queue()
        out: Any = multiprocessing.Queue()
        chunks = [list(range(subscribers))[i::workers] for i in range(workers)]
        procs = [
            multiprocessing.Process(target=worker, args=(kind, sub_url, c, messages, ready, out))
            for c in chunks
        ]
        for p in procs:
            p.start()
        connected = sum(ready.get(timeout=120) for _ in procs)
        time.sleep(0.5)
        started = asyncio.run(publish_all(pub_url, headers, messages, inflight))
        results = [out.get(timeout=180) for _ in procs]
        for p in procs:
            p.join()
    finally:
        proc.terminate()
        proc.wait(10)
    latencies = sorted(x for r in results for x in r["latencies"])
    last = max(r["last"] for r in results)
    expected = connected * messages
    elapsed = last - started if latencies else float("nan")

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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--servers", default="tidings,python-socketio,node-socketio")
    args = parser.parse_args()
    rows = [
        run(kind, args.subscribers, args.messages, args.workers, args.inflight)
        for kind in args.servers.split(",")
    ]
    base = {r["server"]: r["delivered_per_second"] for r in rows}
    columns = list(rows[0])
    print("  ".join(f"{c:>20}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]!s:>20}" for c in columns))
    if "tidings" in base:
        for name, rate in base.items():
            if name != "tidings" and rate:
                print(f"tidings / {name}: {base['tidings'] / rate:.2f}x delivered msg/s")
    path = save("fanout", {"scenario": "fanout", "args": vars(args), "rows": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
