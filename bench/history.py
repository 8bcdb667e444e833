"""The inbox: paging through a user's 100,000 notifications, and marking 10,000 read at once.

    python bench/history.py                                   # SQLite
    python bench/history.py --store postgresql://postgres@127.0.0.1:5432/test

A ``tidings serve`` process; this process writes ``--notes`` notifications for one user through
``/notify/batch`` between two halves of ``--others`` written for a thousand other users (so
the reader's history sits inside the log, as an inactive user's does, with newer and older
rows of others around it), then pages through all of them newest first with ``getNotifications``
(``--page`` per page, each page asked after the answer to the one before; the per-device frame
limit is lifted, a device may not ask that fast) and times every page,
the last ones (the end of the history) apart. Then a second user gets ``--unread``
notifications, two of their devices connect, one sends ``markAllRead``, and the time until its
answer and until the other device holds the count 0 is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, percentile, report, service_token, start_tidings, stop

from tidings.auth.jwt import JwtAuthenticator
from tidings.client import DeviceClient

SECRET = "bench-history-secret-0123456789abcdef0123456789abcdef"


async def fill(http: httpx.AsyncClient, headers: dict[str, str], user: str, n: int) -> None:
    """``n`` notifications for ``user`` (a name ending in ``*``: spread over 1,000 users)."""
    for at in range(0, n, 500):
        items = [
            {"user_id": user.replace("*", str(i % 1000)), "data": {"n": i}}
            for i in range(at, min(n, at + 500))
        ]
        answer = await http.post("/notify/batch", json={"notifications": items}, headers=headers)
        answer.raise_for_status()


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


async def run(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="tidings-bench-history-"))
    store = args.store or f"sqlite:///{tmp}/history.db"
    port = free_port()
    env = {
        "TIDINGS_STORE": store,
        "TIDINGS_JWT_SECRET": SECRET,
        "TIDINGS_BUS": "memory://",
        # pages asked back to back are more frames per second than a device is allowed
        "TIDINGS_MAX_FRAMES_PER_SECOND": "100000",
    }
    server = start_tidings(env, port, tmp / "tidings.log")
    base, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
    auth = JwtAuthenticator(SECRET)
    reader, marker = f"reader-{uuid.uuid4().hex[:6]}", f"marker-{uuid.uuid4().hex[:6]}"
    try:
        headers = {"Authorization": f"Bearer {service_token(store, base, 'notify')}"}
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            await fill(http, headers, "other-*", args.others // 2)
            await fill(http, headers, reader, args.notes)
            await fill(http, headers, "other-*", args.others - args.others // 2)
            await fill(http, headers, marker, args.unread)
        if store.startswith("postgres") and args.analyze:
            # What autovacuum does after a bulk load: without fresh statistics the planner
            # takes 100,000 rows of one user for a hundred (docs/benchmarks.md).
            import asyncpg

            conn = await asyncpg.connect(store)
            await conn.execute("ANALYZE notifications")
            await conn.close()
        pages: list[float] = []
        seen = 0
        async with DeviceClient(ws, token=auth.issue(reader)) as device:
            cursor: str | None = None
            while True:
                started = time.perf_counter()
                try:
                    notes, cursor = await device.get_notifications(limit=args.page, cursor=cursor)
                except TimeoutError:
                    raise SystemExit(f"page {len(pages)} got no answer") from None
                pages.append(time.perf_counter() - started)
                seen += len(notes)
                if cursor is None:
                    break
        last = sorted(pages[-100:])
        every = sorted(pages)
        async with (
            DeviceClient(ws, token=auth.issue(marker)) as phone,
            DeviceClient(ws, token=auth.issue(marker)) as laptop,
        ):
            await laptop.wait_for_count(lambda count: count == args.unread, timeout=60)
            started = time.perf_counter()
            answer = await phone.request({"type": "markAllRead"}, timeout=120)
            answered = time.perf_counter() - started
            await laptop.wait_for_count(lambda count: count == 0, timeout=120)
            arrived = time.perf_counter() - started
        return {
            "scenario": "history",
            "store": store.split(":", 1)[0],
            "analyzed": bool(args.analyze and store.startswith("postgres")),
            "notifications": args.notes,
            "others": args.others,
            "pages": len(pages),
            "listed": seen,
            "page_p50_ms": ms(percentile(every, 0.5)),
            "page_p99_ms": ms(percentile(every, 0.99)),
            "last_100_pages_p99_ms": ms(percentile(last, 0.99)),
            "mark_all_read": args.unread,
            "marked": answer.get("marked"),
            "mark_all_read_answer_ms": ms(answered),
            "count_on_other_device_ms": ms(arrived),
        }
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--notes", type=int, default=100_000, help="notifications to page through")
    parser.add_argument(
        "--others", type=int, default=100_000, help="other users' notifications around them"
    )
    parser.add_argument("--page", type=int, default=50, help="notifications per page")
    parser.add_argument("--unread", type=int, default=10_000, help="notifications to mark read")
    parser.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PostgreSQL: ANALYZE after the bulk load, as autovacuum would",
    )
    args = parser.parse_args()
    report("history", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
