"""Idle connections: N devices connect (JWT at the handshake) and stay idle; measures the
server's memory per connection and its connect rate.

    bash bench/setup.sh                               # once: the picows load generator
    python bench/connections.py --connections 19800
    python bench/connections.py --connections 19800 --ws-protocol websockets-sansio
    python bench/connections.py --connections 19800 --server node-socketio   # or a peer

Memory is the growth of the server's resident set from a warm baseline (100 connections) to N,
divided by the added connections. The connect rate is N over the time from the first to the last
``welcome`` with every client process connecting at once (up to 500 handshakes in flight each),
and N over the CPU seconds the server spent meanwhile (user + system, from /proc): the clients
share the machine's two cores, so the second figure is the server's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, report, start_tidings, stop
from fanout import PROTOCOLS
from fanout import start_server as start_peer
from loadgen import open_client, open_many

from tidings.auth.jwt import JwtAuthenticator

SECRET = "bench-secret-" + "z" * 40


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold(
    kind: str, url: str, first: int, count: int, ready: Any, done: Any
) -> tuple[float, float, int]:
    auth = JwtAuthenticator(SECRET)
    tokens = [auth.issue(f"idle-{i}") for i in range(first, first + count)]

    async def one(i: int) -> Any:
        if kind != "tidings":  # a peer: its own handshake (socket.io joins a room), no JWT
            return await PROTOCOLS[kind][0](url, first + i)
        client = await open_client(url, {"Authorization": f"Bearer {tokens[i]}"})
        await client.expect(b'{"type":"welcome"', timeout=120)
        return client

    started = time.time()
    sockets, failures = await open_many(count, one, concurrency=500)
    finished = time.time()
    ready.put(len(sockets))
    while not done.is_set():  # noqa: ASYNC110 - a multiprocessing event
        await asyncio.sleep(0.2)
    for client in sockets:
        client.close()
    await asyncio.sleep(0.5)
    return started, finished, failures


def worker(kind: str, url: str, first: int, count: int, ready: Any, done: Any, out: Any) -> None:
    import uvloop

    out.put(uvloop.run(hold(kind, url, first, count, ready, done)))


def run_clients(
    kind: str, url: str, first: int, total: int, workers: int
) -> tuple[Any, int, list[Any], Any]:
    """Start client processes; returns once all hold their sockets: (done, held, procs, out)."""
    ready: Any = multiprocessing.Queue()
    out: Any = multiprocessing.Queue()
    done = multiprocessing.Event()
    share = total // workers
    procs = [
        multiprocessing.Process(
            target=worker, args=(kind, url, first + i * share, share, ready, done, out)
        )
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    held = sum(ready.get(timeout=600) for _ in procs)
    return done, held, procs, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=19800)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ws-protocol", default="tidings", help="TIDINGS_WS_PROTOCOL")
    parser.add_argument(
        "--server", default="tidings", choices=["tidings", *PROTOCOLS.keys() - {"tidings"}]
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tidings-conns-"))
    if args.server == "tidings":
        port = free_port()
        server = start_tidings(
            {
                "TIDINGS_STORE": f"sqlite:///{workdir}/bench.db",
                "TIDINGS_JWT_SECRET": SECRET,
                "TIDINGS_MAX_CONNECTS_PER_SECOND": "1000000",
                "TIDINGS_MAX_CONNECTIONS": "1000000",
                # The scenario fills the sandbox's descriptor limit (20,000) on purpose: past
                # the node's default reserve for its store and bus.
                "TIDINGS_MAX_OPEN_CONNECTIONS": "19950",
                "TIDINGS_WS_PROTOCOL": args.ws_protocol,
            },
            port,
            workdir / "server.log",
        )
        url = f"ws://127.0.0.1:{port}/ws"
    else:
        server, url, _, _ = start_peer(args.server, workdir)
    kind = args.server
    try:
        warm_done, _, warm_procs, warm_out = run_clients(kind, url, 0, 100, 1)
        time.sleep(1.0)
        baseline = rss_kib(server.pid)
        cpu_before = cpu_seconds(server.pid)
        done, held, procs, out = run_clients(kind, url, 100, args.connections, args.workers)
        cpu_spent = cpu_seconds(server.pid) - cpu_before
        time.sleep(2.0)
        loaded = rss_kib(server.pid)
        done.set()
        warm_done.set()
        spans = [out.get(timeout=120) for _ in procs]
        warm_out.get(timeout=60)
        for proc in [*procs, *warm_procs]:
            proc.join()
    finally:
        stop(server)
    started = min(s for s, _, _ in spans)
    finished = max(f for _, f, _ in spans)
    result = {
        "scenario": "idle_connections",
        "server": kind,
        "ws_protocol": args.ws_protocol if kind == "tidings" else "-",
        "connections": held,
        "failed": sum(f for _, _, f in spans),
        "server_rss_baseline_mib": round(baseline / 1024, 1),
        "server_rss_loaded_mib": round(loaded / 1024, 1),
        "kib_per_connection": round((loaded - baseline) / max(1, held), 1),
        "connect_seconds": round(finished - started, 2),
        "connects_per_second": round(held / (finished - started)),
        "server_cpu_seconds": round(cpu_spent, 2),
        "connects_per_server_cpu_second": round(held / max(cpu_spent, 0.01)),
    }
    report("idle_connections", result)


if __name__ == "__main__":
    main()
