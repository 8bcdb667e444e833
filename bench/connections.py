"""Idle connections: N devices connect (JWT at the handshake) and stay idle; measures the
server's memory per connection and its connect rate.

    python bench/connections.py --connections 15000

Memory is the growth of the server's resident set from a warm baseline (100 connections) to N,
divided by the added connections. The connect rate is N over the time from the first to the last
``welcome`` with every client process connecting at once (up to 500 handshakes in flight each).
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
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, report, start_tidings

from tidings.auth.jwt import JwtAuthenticator

SECRET = "bench-secret-" + "z" * 40


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold(url: str, first: int, count: int, ready: Any, done: Any) -> tuple[float, float, int]:
    auth = JwtAuthenticator(SECRET)
    tokens = [auth.issue(f"idle-{i}") for i in range(first, first + count)]
    gate = asyncio.Semaphore(500)
    sockets = []
    failures = 0

    async def one(token: str) -> None:
        nonlocal failures
        try:
            async with gate:
                ws = await connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    compression=None,
                    open_timeout=120,
                    ping_interval=None,
                )
                while orjson.loads(await ws.recv())["type"] != "welcome":
                    pass
            sockets.append(ws)
        except Exception:
            failures += 1

    started = time.time()
    await asyncio.gather(*(one(t) for t in tokens))
    finished = time.time()
    ready.put(len(sockets))
    while not done.is_set():  # noqa: ASYNC110 - a multiprocessing event
        await asyncio.sleep(0.2)
    for ws in sockets:
        await ws.close()
    return started, finished, failures


def worker(url: str, first: int, count: int, ready: Any, done: Any, out: Any) -> None:
    out.put(asyncio.run(hold(url, first, count, ready, done)))


def run_clients(url: str, first: int, total: int, workers: int) -> tuple[Any, int, list[Any], Any]:
    """Start client processes; returns once all hold their sockets: (done, held, procs, out)."""
    ready: Any = multiprocessing.Queue()
    out: Any = multiprocessing.Queue()
    done = multiprocessing.Event()
    share = total // workers
    procs = [
        multiprocessing.Process(
            target=worker, args=(url, first + i * share, share, ready, done, out)
        )
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    held = sum(ready.get(timeout=600) for _ in procs)
    return done, held, procs, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=15000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tidings-conns-"))
    port = free_port()
    server = start_tidings(
        {
            "TIDINGS_STORE": f"sqlite:///{workdir}/bench.db",
            "TIDINGS_JWT_SECRET": SECRET,
            "TIDINGS_MAX_CONNECTS_PER_SECOND": "1000000",
        },
        port,
        workdir / "server.log",
    )
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        warm_done, _, warm_procs, warm_out = run_clients(url, 0, 100, 1)
        time.sleep(1.0)
        baseline = rss_kib(server.pid)
        done, held, procs, out = run_clients(url, 100, args.connections, args.workers)
        time.sleep(2.0)
        loaded = rss_kib(server.pid)
        done.set()
        warm_done.set()
        spans = [out.get(timeout=120) for _ in procs]
        warm_out.get(timeout=60)
        for proc in [*procs, *warm_procs]:
            proc.join()
    finally:
        server.terminate()
        server.wait(10)
    started = min(s for s, _, _ in spans)
    finished = max(f for _, f, _ in spans)
    result = {
        "scenario": "idle_connections",
        "connections": held,
        "failed": sum(f for _, _, f in spans),
        "server_rss_baseline_mib": round(baseline / 1024, 1),
        "server_rss_loaded_mib": round(loaded / 1024, 1),
        "kib_per_connection": round((loaded - baseline) / max(1, held), 1),
        "connect_seconds": round(finished - started, 2),
        "connects_per_second": round(held / (finished - started)),
    }
    report("idle_connections", result)


if __name__ == "__main__":
    main()
