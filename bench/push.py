"""APNs throughput: pushes per second from ``POST /messages`` on the ``apns`` channel to a fake
APNs (TLS, HTTP/2 only, every provider token's signature checked), one token per user.

    python bench/push.py --users 10000                # the lean fake (bench/fast_apns.py)
    python bench/push.py --users 10000 --fake suite   # the test suite's stricter fake

A ``tidings serve`` process (its own workers) sends to a fake APNs in a process of its own
(``bench/fast_apns.py``, or the test suite's ``tests/support/fake_apns.py``); this process
registers one ``apns`` token per user through ``/users/{id}/push-tokens``, posts one message to
all users (in messages of at most ``--per-message`` user ids), and times from the first post to
the last push the fake accepted. Every delivery is checked to be ``sent`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, report, service_token, start_tidings, stop

HERE = Path(__file__).parent

BUNDLE_ID = "com.example.bench"

#: the fake APNs in a process of its own: prints its settings as one JSON line, then serves
#: ``GET /count`` on a plain HTTP port with how many pushes it accepted
FAKE = f"""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
sys.path.insert(0, {str(HERE.parent / "tests")!r})
from support.fake_apns import FakeApns, make_p8_key

directory = Path(sys.argv[1])
path, key_id, team_id = make_p8_key(directory)
with FakeApns.running(path, team_id=team_id, key_id=key_id, bundle_id={BUNDLE_ID!r}) as fake:
    class Count(BaseHTTPRequestHandler):
        def do_GET(self):
            body = str(len(fake.accepted)).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    counter = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Count)
    threading.Thread(target=counter.serve_forever, daemon=True).start()
    print(json.dumps({{"url": fake.url, "ca": str(fake.ca_path), "key": str(path),
                      "key_id": key_id, "team_id": team_id}}), flush=True)
    while True:
        time.sleep(3600)
"""


def start_fake(
    tmp: Path, count_port: int, kind: str
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """The fake APNs process, and what it printed: its URL, CA, key file and ids."""
    command = (
        [sys.executable, str(HERE / "fast_apns.py"), str(tmp), str(count_port), BUNDLE_ID]
        if kind == "fast"
        else [sys.executable, "-c", FAKE, str(tmp), str(count_port)]
    )
    fake = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert fake.stdout is not None
    return fake, json.loads(fake.stdout.readline())


async def run(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="tidings-bench-push-"))
    count_port = free_port()
    fake, apns = start_fake(tmp, count_port, args.fake)
    store = f"sqlite:///{tmp}/push.db"
    port = free_port()
    env = {
        "TIDINGS_STORE": store,
        "TIDINGS_APNS_KEY_FILE": apns["key"],
        "TIDINGS_APNS_KEY_ID": apns["key_id"],
        "TIDINGS_APNS_TEAM_ID": apns["team_id"],
        "TIDINGS_APNS_TOPIC": BUNDLE_ID,
        "TIDINGS_APNS_URL": apns["url"],
        "TIDINGS_PUSH_CA_FILE": apns["ca"],
        "TIDINGS_RATE_LIMITS": "{}",
        "TIDINGS_WORKERS": "1",
        "TIDINGS_WORKER_CONCURRENCY": str(args.concurrency),
        "TIDINGS_PIPELINE_POLL_INTERVAL": "0.2",
        "TIDINGS_MAX_RECIPIENTS": str(args.per_message),
    }
    server = start_tidings(env, port, tmp / "tidings.log")
    base = f"http://127.0.0.1:{port}"
    try:
        token = service_token(store, base, "messages")
        headers = {"Authorization": f"Bearer {token}"}
        users = [f"user-{n}" for n in range(args.users)]
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:
            gate = asyncio.Semaphore(32)

            async def register(n: int, user: str) -> None:
                async with gate:
                    answer = await client.post(
                        f"/users/{user}/push-tokens",
                        json={"platform": "apns", "token": f"{n:064x}", "app_id": BUNDLE_ID},
                    )
                    answer.raise_for_status()

            await asyncio.gather(*(register(n, u) for n, u in enumerate(users)))
            started = time.perf_counter()
            ids: list[str] = []
            for at in range(0, len(users), args.per_message):
                answer = await client.post(
                    "/messages",
                    json={
                        "recipients": {"user_ids": users[at : at + args.per_message]},
                        "channels": ["apns"],
                        "content": {"subject": "Order {{ n }}", "text": "Hello {{ user_id }}"},
                        "data": {"n": at},
                    },
                    timeout=120,
                )
                answer.raise_for_status()
                ids.append(answer.json()["message_id"])
            posted = time.perf_counter() - started
            got, deadline = 0, started + args.timeout
            async with httpx.AsyncClient() as counter:
                while got < args.users and time.perf_counter() < deadline:
                    await asyncio.sleep(0.05)
                    got = int((await counter.get(f"http://127.0.0.1:{count_port}/")).text)
            elapsed = time.perf_counter() - started
            states: dict[str, int] = {}
            for message_id in ids:
                found = (await client.get(f"/messages/{message_id}")).json()
                for name, n in found["counts"].items():
                    states[name] = states.get(name, 0) + n
        return {
            "scenario": "push_apns",
            "fake": args.fake,
            "server": "tidings",
            "store": "sqlite",
            "tokens": args.users,
            "concurrency": args.concurrency,
            "post_seconds": round(posted, 2),
            "seconds": round(elapsed, 2),
            "pushes_accepted": got,
            "pushes_per_second": round(got / elapsed),
            "deliveries": json.dumps(states, sort_keys=True),
        }
    finally:
        stop(server)
        fake.kill()
        fake.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000, help="users, one token each")
    parser.add_argument("--per-message", type=int, default=1000, help="user ids per message")
    parser.add_argument("--concurrency", type=int, default=128, help="TIDINGS_WORKER_CONCURRENCY")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--fake",
        choices=["fast", "suite"],
        default="fast",
        help="fast: bench/fast_apns.py (h2 directly); suite: the tests' hypercorn fake",
    )
    args = parser.parse_args()
    report("push_apns", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
