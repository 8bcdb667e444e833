"""Transactional notify: the delay from an application's COMMIT to the count on the user's
device, against plain notify in the same interleaved run.

    python bench/transactional_notify.py --commits 2000 --rate 200 [--users 200]
        [--rollback-every 10] [--postgres postgresql://postgres@127.0.0.1:5432/test]

An embedded application (this process: the node served by uvicorn on tidings' transport, an
asyncpg pool of 10 connections to the same database) runs open-loop at ``--rate`` operations a
second, alternating two kinds on two sets of users, each user with one device (a second
process, ``websockets`` clients):

- transactional: ``BEGIN``; insert an order; ``notify(..., conn=conn)``; ``COMMIT``. Every
  ``--rollback-every``-th one rolls back instead: no notification may exist and no count may
  arrive for it.
- plain: ``BEGIN``; insert an order; ``COMMIT``; then ``notify(...)`` (its own transaction).

For both, the delay is from the moment the business transaction's ``COMMIT`` is sent to the
moment the device has the new count; for plain notify also from the ``notify()`` call. Each
user gets one operation every 2 * users / rate seconds, so versions map to operations.
A fresh database is created on the server of ``--postgres`` and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, percentile, report

SECRET = "bench-secret-" + "t" * 40


async def devices(url: str, users: list[str], ready: Any, done: Any) -> list[tuple]:
    """One device per user; returns (user, version, received_at) of every count frame."""
    from websockets.asyncio.client import connect

    from tidings.auth.jwt import JwtAuthenticator

    auth = JwtAuthenticator(SECRET)
    seen: list[tuple] = []

    async def device(user: str) -> None:
        async with connect(f"{url}?access_token={auth.issue(user)}") as ws:
            await ws.recv()  # welcome
            await ws.recv()  # the first count
            opened.append(user)
            async for message in ws:
                now = time.time()
                frame = orjson.loads(message)
                if frame.get("type") == "newNotificationCountChanged" and frame["version"]:
                    seen.append((user, frame["version"], now))

    opened: list[str] = []
    tasks = [asyncio.create_task(device(u)) for u in users]
    while len(opened) < len(users):
        if failed := [t for t in tasks if t.done()]:
            failed[0].result()
        await asyncio.sleep(0.05)
    ready.put(len(opened))
    while not done.is_set():  # noqa: ASYNC110 - a multiprocessing event
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return seen


def device_worker(url: str, users: list[str], ready: Any, done: Any, out: Any) -> None:
    out.put(asyncio.run(devices(url, users, ready, done)))


async def load(args: argparse.Namespace, database: str, ready: Any, done: Any, out: Any) -> dict:
    import asyncpg
    import uvicorn

    from tidings import Tidings
    from tidings.server import front_config

    port = free_port()
    tidings = Tidings(store=database, jwt_secret=SECRET, node_id="bench-txn")
    await tidings.start()
    config = front_config(
        tidings.asgi(),
        tidings.settings,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    pool = await asyncpg.create_pool(database, min_size=10, max_size=10)
    await pool.execute("CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, user_id TEXT, item TEXT)")
    txn_users = [f"t-{i}" for i in range(args.users)]
    plain_users = [f"p-{i}" for i in range(args.users)]
    while not server.started:  # noqa: ASYNC110 - uvicorn's flag
        await asyncio.sleep(0.01)
    ctx = multiprocessing.get_context("spawn")
    worker = ctx.Process(
        target=device_worker,
        args=(f"ws://127.0.0.1:{port}/ws", txn_users + plain_users, ready, done, out),
    )
    worker.start()
    connected = await asyncio.to_thread(ready.get, True, 120)
    await asyncio.sleep(1.0)

    ops: dict[str, list[dict[str, float]]] = {}  # user → its committed operations, in order
    rolled_back = errors = 0
    insert = "INSERT INTO orders (user_id, item) VALUES ($1, 'book') RETURNING id"

    async def transactional(user: str, rollback: bool) -> None:
        nonlocal rolled_back, errors
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                order = await conn.fetchval(insert, user)
                called = time.time()
                await tidings.notify(user, {"order": order}, conn=conn)
                if rollback:
                    await tx.rollback()
                    rolled_back += 1
                    return
                op = {"commit": time.time(), "call": called}
                op["returned"] = op["commit"]
                ops.setdefault(user, []).append(op)  # in order: one operation per user at once
                await tx.commit()
            except Exception:
                errors += 1
                await tx.rollback()

    async def plain(user: str) -> None:
        nonlocal errors
        try:
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                order = await conn.fetchval(insert, user)
                op = {"commit": time.time()}
                ops.setdefault(user, []).append(op)
                await tx.commit()
            op["call"] = time.time()
            await tidings.notify(user, {"order": order})
            op["returned"] = time.time()
        except Exception:
            errors += 1

    every = args.rollback_every
    txn_total = args.commits + (args.commits // (every - 1) if every > 1 else 0)
    tasks = []
    start = time.perf_counter()
    for i in range(2 * txn_total):
        delay = start + i / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        n = i // 2
        if i % 2 == 0:
            rollback = every > 0 and n % every == every - 1
            tasks.append(asyncio.create_task(transactional(txn_users[n % args.users], rollback)))
        elif n < args.commits:
            tasks.append(asyncio.create_task(plain(plain_users[n % args.users])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    await asyncio.sleep(2.0)  # the last counts arrive; a rolled-back count would too
    done.set()
    seen = await asyncio.to_thread(out.get, True, 60)
    worker.join()
    rows = await pool.fetchval("SELECT count(*) FROM notifications WHERE user_id LIKE 't-%'")
    await pool.close()
    server.should_exit = True
    await serving
    await tidings.close()
    return {
        "ops": ops,
        "seen": seen,
        "connected": connected,
        "rolled_back": rolled_back,
        "errors": errors,
        "txn_rows": rows,
        "elapsed": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=2000, help="committed transactions")
    parser.add_argument("--rate", type=float, default=200, help="operations per second")
    parser.add_argument("--users", type=int, default=200, help="users of each kind")
    parser.add_argument("--rollback-every", type=int, default=10)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    import asyncpg

    name = f"tidings_bench_txn_{uuid.uuid4().hex[:8]}"
    base = args.postgres.rpartition("/")[0]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(args.postgres)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        ctx = multiprocessing.get_context("spawn")
        ready, out, done = ctx.Queue(), ctx.Queue(), ctx.Event()
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            run = asyncio.run
        measured = run(load(args, f"{base}/{name}", ready, done, out))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    ops, seen = measured["ops"], measured["seen"]
    delays: dict[str, list[float]] = {
        "txn_commit": [],
        "plain_commit": [],
        "plain_call": [],
        # how long the call takes: inside the transaction, the user's lock held meanwhile
        "txn_notify": [
            op["returned"] - op["call"] for u, v in ops.items() if u[0] == "t" for op in v
        ],
        "plain_notify": [
            op["returned"] - op["call"]
            for u, v in ops.items()
            if u[0] == "p"
            for op in v
            if "returned" in op
        ],
    }
    unexpected = 0
    for user, version, received in seen:
        done_ops = ops.get(user, [])
        if not 0 < version <= len(done_ops):
            unexpected += 1  # a count no committed operation explains (a rolled-back one?)
            continue
        op = done_ops[version - 1]
        if user.startswith("t-"):
            delays["txn_commit"].append(received - op["commit"])
        else:
            delays["plain_commit"].append(received - op["commit"])
            delays["plain_call"].append(received - op["call"])

    def ms(values: list[float], p: float) -> float | None:
        value = percentile(sorted(values), p)
        return None if value is None else round(value * 1000, 2)

    expected = {kind: sum(len(v) for u, v in ops.items() if u[0] == kind) for kind in "tp"}
    result: dict[str, Any] = {
        "scenario": "transactional_notify",
        "store": "postgresql",
        "users_each": args.users,
        "devices": measured["connected"],
        "rate_per_second": args.rate,
        "seconds": round(measured["elapsed"], 1),
        "transactions_committed": expected["t"],
        "transactions_rolled_back": measured["rolled_back"],
        "transactional_rows_stored": measured["txn_rows"],
        "plain_notifies": expected["p"],
        "errors": measured["errors"],
        "counts_unexplained": unexpected,
        "transactional_lost": expected["t"] - len(delays["txn_commit"]),
        "plain_lost": expected["p"] - len(delays["plain_commit"]),
    }
    for key, label in (
        ("txn_commit", "transactional_commit_to_device"),
        ("plain_commit", "plain_commit_to_device"),
        ("plain_call", "plain_notify_call_to_device"),
        ("txn_notify", "transactional_notify_call"),
        ("plain_notify", "plain_notify_call"),
    ):
        for p in (0.5, 0.95, 0.99):
            result[f"{label}_p{int(p * 100)}_ms"] = ms(delays[key], p)
        result[f"{label}_max_ms"] = ms(delays[key], 1.0)
    report("transactional_notify", result)


if __name__ == "__main__":
    main()
