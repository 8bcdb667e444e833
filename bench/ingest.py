"""Ingest: ``POST /notify`` requests per second, each persisted before its answer, one
notification per request and in batches (``POST /notify/batch``).

    bash bench/setup.sh                      # once: aiohttp for the load generator
    python bench/ingest.py --seconds 10
    python bench/ingest.py --seconds 10 --batch 500
    python bench/ingest.py --seconds 10 --k6          # single requests from k6 (Go) instead

The load comes from ``--workers`` processes, each keeping ``--concurrency`` requests in flight
over keep-alive connections for ``--seconds``; every answer is checked (201, or 200 with every
item created) and the stored total is compared with what was acknowledged at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, report, service_token, start_tidings, stop


async def load(url: str, token: str, batch: int, seconds: float, concurrency: int) -> list[int]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    acknowledged = failed = 0
    started = time.time()
    deadline = time.monotonic() + seconds
    tag = os.getpid()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def loop(lane: int) -> None:
            nonlocal acknowledged, failed
            i = 0
            while time.monotonic() < deadline:
                i += 1
                if batch:
                    body = orjson.dumps(
                        {
                            "notifications": [
                                {"user_id": f"u{tag}-{lane}-{k % 50}", "data": {"i": i, "k": k}}
                                for k in range(batch)
                            ]
                        }
                    )
                    async with http.post(f"{url}/notify/batch", data=body, headers=headers) as r:
                        answer = await r.read()
                        if r.status == 200 and orjson.loads(answer)["created"] == batch:
                            acknowledged += batch
                        else:
                            failed += 1
                else:
                    body = orjson.dumps({"user_id": f"u{tag}-{lane}-{i % 50}", "data": {"i": i}})
                    async with http.post(f"{url}/notify", data=body, headers=headers) as r:
                        await r.read()
                        if r.status == 201:
                            acknowledged += 1
                        else:
                            failed += 1

        await asyncio.gather(*(loop(lane) for lane in range(concurrency)))
    return [acknowledged, failed, started, time.time()]


def worker(url: str, token: str, batch: int, seconds: float, concurrency: int, out: Any) -> None:
    import uvloop

    out.put(uvloop.run(load(url, token, batch, seconds, concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=0, help="items per /notify/batch; 0: single")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight each")
    parser.add_argument("--store", default=None, help="store URL (default: a fresh SQLite file)")
    parser.add_argument(
        "--k6", action="store_true", help="single requests from k6 (bench/setup.sh installs it)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tidings-ingest-"))
    store = args.store or f"sqlite:///{workdir}/ingest.db"
    port = free_port()
    server = start_tidings(
        {"TIDINGS_STORE": store, "TIDINGS_JWT_SECRET": "bench-" + "i" * 40},
        port,
        workdir / "server.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        token = service_token(store, base, "notify")
        if args.k6:
            totals = [run_k6(base, token, args.seconds, args.workers * args.concurrency)]
            elapsed = args.seconds
        else:
            totals, elapsed = run_python(base, token, args)
    finally:
        stop(server)
    report_result(args, store, totals, elapsed)


def run_k6(base: str, token: str, seconds: float, users: int) -> list[int]:
    """[acknowledged, failed] from k6's summary."""
    summary = Path(tempfile.mkdtemp(prefix="tidings-k6-")) / "summary.json"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "k6"),
            "run",
            "--quiet",
            "--vus",
            str(users),
            "--duration",
            f"{seconds}s",
            "--summary-export",
            str(summary),
            "-e",
            f"URL={base}",
            "-e",
            f"TOKEN={token}",
            str(Path(__file__).parent / "ingest_k6.js"),
        ],
        check=True,
    )
    checks = orjson.loads(summary.read_bytes())["root_group"]["checks"]["created"]
    return [int(checks["passes"]), int(checks["fails"])]


def run_python(base: str, token: str, args: Any) -> tuple[list[list[int]], float]:
    """[acknowledged, failed, started, ended] of each aiohttp worker process, and the seconds
    from the first one's start to the last one's end (not counting the processes' own start-up:
    importing aiohttp and uvloop took up to a second, which the rate must not include)."""
    out: Any = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(
            target=worker, args=(base, token, args.batch, args.seconds, args.concurrency, out)
        )
        for _ in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    totals = [out.get(timeout=args.seconds + 120) for _ in procs]
    elapsed = max(t[3] for t in totals) - min(t[2] for t in totals)
    for proc in procs:
        proc.join()
    return totals, elapsed


def report_result(args: Any, store: str, totals: list[list[int]], elapsed: float) -> None:
    acknowledged = sum(t[0] for t in totals)
    stored = asyncio.run(count_stored(store))
    requests = acknowledged // max(1, args.batch) if args.batch else acknowledged
    result = {
        "scenario": "ingest",
        "mode": f"batch of {args.batch}" if args.batch else "single" + (" (k6)" if args.k6 else ""),
        "store": store.split(":")[0],
        "seconds": round(elapsed, 1),
        "requests_per_second": round(requests / elapsed),
        "notifications_per_second": round(acknowledged / elapsed),
        "acknowledged": acknowledged,
        "stored": stored,
        "failed_requests": sum(t[1] for t in totals),
    }
    report("ingest", result)


async def count_stored(store: str) -> int:
    from tidings.storage import create_store

    async with create_store(store) as opened:
        total = 0
        after = ""
        while True:
            page, after = await opened.notification_log(after, 10_000)
            total += len(page)
            if not page:
                return total


if __name__ == "__main__":
    main()
