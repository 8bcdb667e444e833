"""Pipeline throughput: deliveries per second from ``POST /messages`` to a local SMTP sink and
to a webhook receiver.

    python bench/pipeline.py --users 1000 --messages 20 --channel email
    python bench/pipeline.py --users 1000 --messages 20 --channel webhook
    python bench/pipeline.py --store postgresql://postgres@127.0.0.1/bench_pipeline ...

A ``tidings serve`` process (its own workers) sends to an aiosmtpd sink and a raw-ASGI webhook
receiver, each in a process of its own; this process creates the users' contact points, posts
``--messages`` messages to all ``--users`` users, and times from the first post to the last
delivery arriving. Every delivery is checked to be ``sent`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, report, service_token, start_tidings, stop

SINK = """
import asyncio, sys
from aiosmtpd.controller import Controller
count = 0
class Handler:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        return "250 OK"
async def counter(reader, writer):
    writer.write(str(count).encode()); await writer.drain(); writer.close()
async def main():
    Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1])).start()
    server = await asyncio.start_server(counter, "127.0.0.1", int(sys.argv[2]))
    await server.serve_forever()
asyncio.run(main())
"""

RECEIVER = """
import sys, uvicorn
count = 0
async def app(scope, receive, send):
    global count
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["method"] == "POST":
        count += 1
    body = str(count).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def spawn(code: str, *ports: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, ports)])


async def read_count(channel: str, port: int) -> int:
    if channel == "email":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = await reader.read()
        writer.close()
        return int(data or 0)
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"http://127.0.0.1:{port}/count")).text)


async def run(args: argparse.Namespace) -> dict[str, object]:
    smtp, count_port, hook = free_port(), free_port(), free_port()
    sink, receiver = spawn(SINK, smtp, count_port), spawn(RECEIVER, hook)
    tmp = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    store = args.store or f"sqlite:///{tmp}/pipeline.db"
    port = free_port()
    env = {
        "TIDINGS_STORE": store,
        "TIDINGS_SMTP_URL": f"smtp://127.0.0.1:{smtp}",
        "TIDINGS_ALLOW_PRIVATE_ADDRESSES": "true",
        "TIDINGS_RATE_LIMITS": "{}",
        "TIDINGS_WORKER_CONCURRENCY": str(args.concurrency),
        "TIDINGS_WORKERS": "1",
        "TIDINGS_PIPELINE_POLL_INTERVAL": "0.2",
    }
    server = start_tidings(env, port, tmp / "tidings.log")
    base = f"http://127.0.0.1:{port}"
    try:
        token = service_token(store, base, "messages")
        headers = {"Authorization": f"Bearer {token}"}
        users = [f"user-{n}" for n in range(args.users)]
        address = (
            (lambda u: f"{u}@example.com")
            if args.channel == "email"
            else (lambda u: f"http://127.0.0.1:{hook}/hook/{u}")
        )
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:
            gate = asyncio.Semaphore(32)

            async def contact(user: str) -> None:
                async with gate:
                    answer = await client.put(
                        f"/users/{user}/contacts/{args.channel}", json={"address": address(user)}
                    )
                    answer.raise_for_status()

            await asyncio.gather(*(contact(u) for u in users))
            expected = args.users * args.messages
            started = time.perf_counter()
            ids: list[str] = []
            for n in range(args.messages):
                answer = await client.post(
                    "/messages",
                    json={
                        "recipients": {"user_ids": users},
                        "channels": [args.channel],
                        "content": {"subject": "Order {{ n }}", "text": "Hello {{ user_id }}"},
                        "data": {"n": n},
                    },
                    timeout=60,
                )
                answer.raise_for_status()
                ids.append(answer.json()["message_id"])
            posted = time.perf_counter() - started
            got = 0
            counter = count_port if args.channel == "email" else hook
            deadline = started + args.timeout
            while got < expected and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
                got = await read_count(args.channel, counter)
            elapsed = time.perf_counter() - started
            states: dict[str, int] = {}
            await asyncio.sleep(0.5)  # the last completions are recorded after the sink's answer
            for message_id in ids:
                found = (await client.get(f"/messages/{message_id}", timeout=60)).json()
                for state, n in found["counts"].items():
                    states[state] = states.get(state, 0) + n
    finally:
        stop(server)
        for proc in (sink, receiver):
            proc.terminate()
            proc.wait()
    return {
        "channel": args.channel,
        "store": "postgresql" if store.startswith("postgres") else "sqlite",
        "users": args.users,
        "messages": args.messages,
        "deliveries_expected": expected,
        "deliveries_received": got,
        "states_at_the_end": states,
        "posting_seconds": round(posted, 3),
        "seconds_until_last_delivery": round(elapsed, 3),
        "deliveries_per_second": round(got / elapsed),
        "worker_concurrency": args.concurrency,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--channel", choices=["email", "webhook"], default="email")
    parser.add_argument("--store", help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--concurrency", type=int, default=64, help="TIDINGS_WORKER_CONCURRENCY")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    report(f"pipeline-{args.channel}", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
