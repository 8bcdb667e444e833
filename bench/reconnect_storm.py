"""Reconnect storm: N devices that each missed M notifications reconnect together in deliver
mode; measures the time until every notification is delivered and acknowledged, and the CPU
the node (and a local PostgreSQL's backends) spent on it.

    python bench/reconnect_storm.py --devices 5000 --missed 10 [--store URL] [--workers 2]

The devices and their missed notifications are written to the store first (through the
library, as the server would), then a fresh server starts and the load generator (several
processes, many connections each) connects every device at once.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from common import ProcessCpu, free_port, percentile, report, start_tidings, stop

from tidings import Tidings
from tidings.auth.jwt import JwtAuthenticator

SECRET = "bench-secret-" + "z" * 40


async def prepare(store: str, devices: int, missed: int) -> list[tuple[str, str]]:
    """Create one device per user, then ``missed`` notifications per user."""
    pairs: list[tuple[str, str]] = []
    async with Tidings(store=store, jwt_secret=SECRET, bus="memory://") as tidings:
        for i in range(devices):
            device = await tidings.store.bind_device(f"user-{i}", f"device-{i:08d}")
            pairs.append((device.user_id, device.connection_id))
        for round_ in range(missed):
            await asyncio.gather(
                *(tidings.notify(f"user-{i}", {"round": round_}) for i in range(devices))
            )
    return pairs


async def run_devices(url: str, pairs: list[tuple[str, str]], missed: int, start_at: float) -> dict:
    auth = JwtAuthenticator(SECRET)
    tokens = [auth.issue(user) for user, _ in pairs]
    await asyncio.sleep(max(0.0, start_at - time.time()))
    gate = asyncio.Semaphore(500)  # connects in flight per process
    latencies: list[float] = []
    failures = 0

    async def device(token: str, cid: str) -> None:
        nonlocal failures
        t0 = time.time()
        try:
            async with gate:
                ws = await connect(
                    f"{url}?deliver=1",
                    additional_headers={
                        "Authorization": f"Bearer {token}",
                        "Cookie": f"tidings_cid={cid}",
                    },
                    open_timeout=60,
                    compression=None,
                    max_queue=None,
                )
            async with ws, asyncio.timeout(120):
                got: list[str] = []
                async for message in ws:
                    frame = orjson.loads(message)
                    if frame["type"] == "notification":
                        got.append(frame["notification"]["notification_id"])
                        if len(got) == missed:
                            await ws.send(
                                orjson.dumps(
                                    {"type": "ack", "id": 1, "notification_ids": got}
                                ).decode()
                            )
                    elif frame["type"] == "reply" and frame.get("id") == 1:
                        break
            latencies.append(time.time() - t0)
        except Exception:
            failures += 1

    await asyncio.gather(*(device(t, cid) for t, (_, cid) in zip(tokens, pairs, strict=True)))
    return {"latencies": latencies, "failures": failures, "end": time.time()}


def worker(
    url: str, pairs: list[tuple[str, str]], missed: int, start_at: float, out: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(run_devices(url, pairs, missed, start_at)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--missed", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", help="store URL (default: a fresh SQLite file)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    store = args.store or f"sqlite:///{workdir}/bench.db"
    t0 = time.time()
    pairs = asyncio.run(prepare(store, args.devices, args.missed))
    print(f"prepared {args.devices} devices x {args.missed} missed in {time.time() - t0:.1f}s")

    port = free_port()
    server = start_tidings(
        {"TIDINGS_STORE": store, "TIDINGS_JWT_SECRET": SECRET, "TIDINGS_BUS": "memory://"},
        port,
        workdir / "server.log",
    )
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        start_at = time.time() + 2.0
        out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        chunks = [pairs[i :: args.workers] for i in range(args.workers)]
        procs = [
            multiprocessing.Process(target=worker, args=(url, chunk, args.missed, start_at, out))
            for chunk in chunks
        ]
        node_cpu, store_cpu = ProcessCpu(pid=server.pid), ProcessCpu(name="postgres")
        node_cpu.start()
        store_cpu.start()
        for proc in procs:
            proc.start()
        results = [out.get() for _ in procs]
        node_seconds, store_seconds = node_cpu.stop(), store_cpu.stop()
        for proc in procs:
            proc.join()
    finally:
        stop(server)

    latencies = sorted(x for r in results for x in r["latencies"])
    failures = sum(r["failures"] for r in results)
    total = max(r["end"] for r in results) - start_at
    delivered = len(latencies) * args.missed

    def pct(p: float) -> float:
        return round(percentile(latencies, p) or 0.0, 2)

    result = {
        "scenario": "reconnect_storm",
        "devices": args.devices,
        "missed_each": args.missed,
        "store": store.split(":", 1)[0],
        "workers": args.workers,
        "seconds_until_all_acked": round(total, 2),
        "delivered_and_acked": delivered,
        "failed_devices": failures,
        "notifications_per_second": round(delivered / total) if total else 0,
        "device_done_p50_s": pct(0.5),
        "device_done_p95_s": pct(0.95),
        "device_done_p99_s": pct(0.99),
        # CPU from the start of the load generator until the last device was done
        "node_cpu_s": node_seconds,
        "node_cpu_ms_per_device": round(node_seconds * 1000 / args.devices, 3),
    }
    if store.startswith("postgres"):  # the local server's backends
        result["postgres_cpu_s"] = store_seconds
        result["postgres_cpu_ms_per_device"] = round(store_seconds * 1000 / args.devices, 3)
    report("reconnect_storm", result)


if __name__ == "__main__":
    main()
