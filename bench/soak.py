"""Soak: mixed load on one ``tidings serve`` (SQLite) for a bounded time, watching memory, tasks
and connections for growth, and checking that no acknowledged notification is lost.

    python bench/soak.py --minutes 10
    python bench/soak.py --quick            # 1 minute

From one asyncio process: devices that connect and disconnect continually (deliver-mode devices
with a fixed ``connection_id`` that acknowledge most of what they get, devices that follow the
count and fetch/mark unseen notifications, devices that subscribe to topics, devices that send
bad frames: malformed JSON, unknown types, wrong shapes, binary, over 64 KiB and, rarely, over
1 MiB), notifications through ``POST /notify`` (each with a unique ``notification_id``) and
messages through ``POST /publish``. Every 10 s: the server's RSS (``/proc/<pid>/status``) and,
when ``GET /metrics`` exists, ``tidings_asyncio_tasks``, ``tidings_connections`` and
``process_resident_memory_bytes``. At the end every deliver-mode device reconnects with its
``connection_id``: every notification the server acknowledged (201) for its user must have
reached it at least once ("lost": the missing ids). Growth per minute is the least-squares slope
of the samples after a warm-up (the first 20 % of the run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, report, service_token, start_tidings, stop

from tidings.auth.jwt import JwtAuthenticator

SECRET = "soak-secret-" + "s" * 40
SAMPLE_EVERY = 10.0
TOPICS = [f"soak-topic-{i}" for i in range(20)]
GIANT = '{"type":"getUnseen","pad":"' + "x" * (1024 * 1024 + 16) + '"}'
#: (frame, the error code it must get)
BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("{not json", "invalid_json"),
    ('{"type":"nope","id":1}', "unknown_type"),
    ("[1,2,3]", "invalid_frame"),
    ('{"type":"markSeen","id":2,"notification_ids":"x"}', "invalid_frame"),
    ('{"type":"getUnseen","id":3,"limit":0}', "invalid_frame"),
    ('{"type":"ack","id":4,"notification_ids":["x"]}', "not_deliver_mode"),
    (b"\x00\x01binary", "binary_frame"),
    ('{"type":"getUnseen","pad":"' + "x" * 70_000 + '"}', "frame_too_large"),
]


@dataclass
class Stats:
    """What the load did and saw."""

    connects: int = 0
    connect_errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)  # closes the device did not cause
    notify_status: Counter[int] = field(default_factory=Counter)
    publish_status: Counter[int] = field(default_factory=Counter)
    http_errors: int = 0
    bad_frames: int = 0
    bad_frames_answered: int = 0
    giant_frames: int = 0
    delivered_frames: int = 0
    redelivered: int = 0
    acks: int = 0
    count_frames: int = 0
    marked_seen: int = 0
    topic_messages: int = 0
    anomalies: list[str] = field(default_factory=list)

    def anomaly(self, text: str) -> None:
        if len(self.anomalies) < 50:
            self.anomalies.append(text[:300])


@dataclass
class Load:
    """The run's shared state."""

    ws_url: str
    base: str
    tokens: dict[str, str]
    users: int
    deliver_devices: int
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: Stats = field(default_factory=Stats)
    acked: dict[str, set[str]] = field(default_factory=dict)  # 201s, per user
    delivered: dict[str, set[str]] = field(default_factory=dict)  # per deliver-mode user
    auth: JwtAuthenticator = field(default_factory=lambda: JwtAuthenticator(SECRET))
    jwts: dict[str, str] = field(default_factory=dict)

    def jwt(self, user: str) -> str:
        if user not in self.jwts:
            self.jwts[user] = self.auth.issue(user)
        return self.jwts[user]


def user_name(i: int) -> str:
    return f"soak-u{i}"


# Devices.


async def open_device(load: Load, user: str, query: str = "") -> ClientConnection:
    """A device socket past its welcome."""
    ws = await connect(
        load.ws_url + query,
        additional_headers={"Authorization": f"Bearer {load.jwt(user)}"},
        max_size=None,
        ping_interval=None,
        open_timeout=15,
        close_timeout=2,
    )
    welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
    if welcome.get("type") != "welcome":
        load.stats.anomaly(f"first frame is not welcome: {welcome}")
    load.stats.connects += 1
    return ws


async def next_frame(ws: ClientConnection, timeout: float) -> dict[str, Any] | None:
    """The next server frame (None after ``timeout``); ConnectionClosed passes through."""
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        return None
    frame = orjson.loads(raw)
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ValueError(f"not a frame: {raw!r:.200}")
    return frame


def on_common(load: Load, frame: dict[str, Any], who: str) -> None:
    """Frames any device may get; errors it did not ask for are anomalies."""
    kind = frame["type"]
    if kind == "newNotificationCountChanged":
        load.stats.count_frames += 1
    elif kind == "topicMessage":
        load.stats.topic_messages += 1
    elif kind == "error":
        load.stats.anomaly(f"{who}: {frame}")


def record_delivery(load: Load, user: str, note: dict[str, Any]) -> str:
    nid = str(note["notification_id"])
    seen = load.delivered.setdefault(user, set())
    load.stats.delivered_frames += 1
    if nid in seen:
        load.stats.redelivered += 1
    seen.add(nid)
    if note.get("user_id") != user:
        load.stats.anomaly(f"{user} got a notification of {note.get('user_id')}")
    return nid


async def deliver_session(load: Load, ws: ClientConnection, user: str, until: float) -> None:
    """Acknowledge 90 % of the notifications (the rest must come again on reconnection)."""
    loop = asyncio.get_running_loop()
    while not load.stop.is_set() and loop.time() < until:
        frame = await next_frame(ws, 1.0)
        if frame is None:
            continue
        if frame["type"] == "notification":
            nid = record_delivery(load, user, frame["notification"])
            if random.random() < 0.9:
                await ws.send(orjson.dumps({"type": "ack", "notification_ids": [nid]}).decode())
                load.stats.acks += 1
        elif frame["type"] == "queueGap":
            load.stats.anomaly(f"{user}: {frame} with no queue limit set")
        else:
            on_common(load, frame, user)


async def count_session(load: Load, ws: ClientConnection, user: str, until: float) -> None:
    """Follow the count; now and then fetch unseen notifications and mark them seen."""
    loop = asyncio.get_running_loop()
    next_fetch = loop.time() + random.uniform(1, 5)
    while not load.stop.is_set() and loop.time() < until:
        if loop.time() >= next_fetch:
            await ws.send('{"type":"getUnseen","id":"fetch","limit":50}')
            next_fetch = loop.time() + random.uniform(3, 8)
        frame = await next_frame(ws, 1.0)
        if frame is None:
            continue
        if frame["type"] == "newNotificationData":
            ids = [n["notification_id"] for n in frame["notifications"]]
            if ids:
                await ws.send(orjson.dumps({"type": "markSeen", "notification_ids": ids}).decode())
        elif frame["type"] == "reply" and "marked" in frame:
            load.stats.marked_seen += frame["marked"]
        else:
            on_common(load, frame, user)


async def topic_session(load: Load, ws: ClientConnection, user: str, until: float) -> None:
    """Subscribe to a few topics (the session keeps them across reconnections)."""
    loop = asyncio.get_running_loop()
    topics = random.sample(TOPICS, random.randint(1, 3))
    await ws.send(orjson.dumps({"type": "subscribe", "id": "sub", "topics": topics}).decode())
    while not load.stop.is_set() and loop.time() < until:
        frame = await next_frame(ws, 1.0)
        if frame is not None and frame["type"] != "reply":
            on_common(load, frame, user)


async def bad_session(load: Load, ws: ClientConnection, user: str, until: float) -> None:
    """Bad frames, each of which must get its error and leave the socket open; rarely a frame
    over 1 MiB, which must close it with 1009."""
    loop = asyncio.get_running_loop()
    while not load.stop.is_set() and loop.time() < until:
        await asyncio.sleep(random.uniform(0.5, 1.5))
        if random.random() < 0.01:
            await giant_frame(load, ws)
            return
        frame, code = random.choice(BAD_FRAMES)
        await ws.send(frame)
        load.stats.bad_frames += 1
        answer = await next_frame(ws, 10.0)
        while answer is not None and answer["type"] != "error":
            on_common(load, answer, user)
            answer = await next_frame(ws, 10.0)
        if answer is not None and answer["code"] == code:
            load.stats.bad_frames_answered += 1
        else:
            load.stats.anomaly(f"bad frame {frame[:40]!r}: expected {code}, got {answer}")


async def giant_frame(load: Load, ws: ClientConnection) -> None:
    load.stats.giant_frames += 1
    load.stats.bad_frames += 1
    try:
        await ws.send(GIANT)
        while await next_frame(ws, 10.0) is not None:
            pass
        load.stats.anomaly("a frame over 1 MiB did not close the socket")
    except ConnectionClosed:
        if ws.close_code == 1009:
            load.stats.bad_frames_answered += 1
        else:
            load.stats.anomaly(f"a frame over 1 MiB closed with {ws.close_code}")


SESSIONS = {
    "deliver": deliver_session,
    "count": count_session,
    "topic": topic_session,
    "bad": bad_session,
}


async def churn(load: Load, kind: str, i: int) -> None:
    """One device: connect, run a session of 3-25 s, disconnect, pause, again until stopped."""
    user = user_name(i % load.users)
    query = {
        "deliver": f"?deliver=1&connection_id=soak-dev-{i:05d}",
        "topic": f"?session_id=soak-session-{i}",
    }.get(kind, "")
    loop = asyncio.get_running_loop()
    while not load.stop.is_set():
        try:
            ws = await open_device(load, user, query)
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            load.stats.connect_errors[type(exc).__name__] += 1
            await asyncio.sleep(1.0)
            continue
        try:
            await SESSIONS[kind](load, ws, user, loop.time() + random.uniform(3, 25))
        except ConnectionClosed:
            load.stats.closes[ws.close_code or 1006] += 1
        except ValueError as exc:
            load.stats.anomaly(f"{kind} {user}: {exc}")
        finally:
            await ws.close()
        await asyncio.sleep(random.uniform(0.1, 2.0))


# HTTP load.


async def post(load: Load, http: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> int:
    scope = "notify" if path == "/notify" else "publish"
    headers = {"Authorization": f"Bearer {load.tokens[scope]}", "Content-Type": "application/json"}
    try:
        async with http.post(load.base + path, data=orjson.dumps(body), headers=headers) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        load.stats.http_errors += 1
        return 0


async def notify_one(load: Load, http: aiohttp.ClientSession, n: int) -> None:
    # Half of the notifications go to users with a deliver-mode device.
    i = random.randrange(load.deliver_devices if n % 2 else load.users)
    user, nid = user_name(i), f"soak-{n}"
    body = {"user_id": user, "notification_id": nid, "data": {"n": n, "text": "soak"}}
    status = await post(load, http, "/notify", body)
    load.stats.notify_status[status] += 1
    if status == 201:
        load.acked.setdefault(user, set()).add(nid)


async def publish_one(load: Load, http: aiohttp.ClientSession, n: int) -> None:
    body = {"topic": random.choice(TOPICS), "data": {"n": n}}
    load.stats.publish_status[await post(load, http, "/publish", body)] += 1


async def at_rate(load: Load, rate: float, one: Any) -> None:
    """Call ``one(load, http, n)`` ``rate`` times a second (at most 128 in flight) until stopped."""
    gate = asyncio.Semaphore(128)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def guarded(n: int) -> None:
        async with gate:
            await one(load, http, n)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for n in itertools.count():
            if load.stop.is_set():
                break
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(guarded(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)


# Samples.


def rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found[1]) if found else None


async def metrics(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The gauges of ``GET /metrics`` that the soak follows (empty when there is none)."""
    wanted = ("tidings_asyncio_tasks", "tidings_connections", "process_resident_memory_bytes")
    try:
        async with http.get(f"{base}/metrics") as response:
            if response.status != 200:
                return {}
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


async def take_sample(http: aiohttp.ClientSession, load: Load, pid: int, t0: float) -> dict:
    found = await metrics(http, load.base)
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "rss_kib": rss_kib(pid),
        "tasks": found.get("tidings_asyncio_tasks"),
        "connections": found.get("tidings_connections"),
        "process_rss_kib": (
            round(found["process_resident_memory_bytes"] / 1024)
            if "process_resident_memory_bytes" in found
            else None
        ),
        "notified": load.stats.notify_status[201],
        "connects": load.stats.connects,
    }


async def sampler(load: Load, pid: int, t0: float, samples: list[dict]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        while not load.stop.is_set():
            samples.append(await take_sample(http, load, pid, t0))
            print("  ", samples[-1], flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(load.stop.wait(), SAMPLE_EVERY)


# The run.


async def prime(load: Load) -> None:
    """Connect each deliver-mode device once, so that its queue exists before the first
    notification (a queue holds what was created after the device first connected)."""

    async def one(i: int) -> None:
        ws = await open_device(load, user_name(i), f"?deliver=1&connection_id=soak-dev-{i:05d}")
        await next_frame(ws, 5.0)  # the count
        await ws.close()

    await asyncio.gather(*(one(i) for i in range(load.deliver_devices)))


async def drain_device(load: Load, i: int, gate: asyncio.Semaphore) -> None:
    """Reconnect a deliver-mode device and take (and acknowledge) what it still has."""
    user = user_name(i)
    async with gate:
        ws = await open_device(load, user, f"?deliver=1&connection_id=soak-dev-{i:05d}")
        try:
            while (frame := await next_frame(ws, 3.0)) is not None:
                if frame["type"] == "notification":
                    nid = record_delivery(load, user, frame["notification"])
                    await ws.send(orjson.dumps({"type": "ack", "notification_ids": [nid]}).decode())
        finally:
            await ws.close()


async def verify(load: Load) -> dict[str, list[str]]:
    """Every acknowledged notification of a deliver-mode user reached its device."""
    gate = asyncio.Semaphore(25)
    await asyncio.gather(*(drain_device(load, i, gate) for i in range(load.deliver_devices)))
    lost: dict[str, list[str]] = {}
    for i in range(load.deliver_devices):
        user = user_name(i)
        missing = load.acked.get(user, set()) - load.delivered.get(user, set())
        if missing:
            lost[user] = sorted(missing)
    return lost


async def idle_state(load: Load) -> dict:
    """The server once every client has left (and 2 s more): connections and gauges."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for _ in range(50):
            async with http.get(f"{load.base}/health") as response:
                health = await response.json()
            if health.get("connections") == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)
        return {"health_connections": health.get("connections"), **await metrics(http, load.base)}


async def run(load: Load, args: argparse.Namespace, pid: int) -> dict:
    seconds = args.minutes * 60
    await prime(load)
    before = await idle_state(load)
    t0 = time.monotonic()
    samples: list[dict] = []
    kinds = {"deliver": load.deliver_devices, "count": args.count_devices}
    kinds |= {"topic": args.topic_devices, "bad": args.bad_devices}
    devices = [asyncio.create_task(churn(load, k, i)) for k, n in kinds.items() for i in range(n)]
    http = [
        asyncio.create_task(at_rate(load, args.rate, notify_one)),
        asyncio.create_task(at_rate(load, args.publish_rate, publish_one)),
    ]
    watcher = asyncio.create_task(sampler(load, pid, t0, samples))
    await asyncio.sleep(seconds)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        samples.append(await take_sample(client, load, pid, t0))  # the last one under load
    load.stop.set()
    await asyncio.gather(*http, watcher)
    await asyncio.gather(*devices)
    lost = await verify(load)
    after = await idle_state(load)
    return {"samples": samples, "lost": lost, "before": before, "after": after, "elapsed": seconds}


# Summary.


def slope_per_minute(samples: list[dict], key: str, warmup_s: float) -> float | None:
    """Least-squares growth of ``key`` per minute over the samples after the warm-up."""
    points = [(s["t_s"], s[key]) for s in samples if s["t_s"] >= warmup_s and s[key] is not None]
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return round(cov / var * 60, 2)


def first_last(samples: list[dict], key: str) -> tuple[Any, Any]:
    values = [s[key] for s in samples if s[key] is not None]
    return (values[0], values[-1]) if values else (None, None)


def counts(stats: Stats) -> dict[str, Any]:
    """What the load did, and what it saw that it did not ask for."""
    return {
        "notifies": dict(stats.notify_status),
        "publishes": dict(stats.publish_status),
        "http_errors": stats.http_errors,
        "connects": stats.connects,
        "connect_errors": dict(stats.connect_errors),
        "unrequested_closes": dict(stats.closes),
        "bad_frames": stats.bad_frames,
        "bad_frames_answered_as_documented": stats.bad_frames_answered,
        "frames_over_1mib": stats.giant_frames,
        "deliveries": stats.delivered_frames,
        "redeliveries": stats.redelivered,
        "acks_sent": stats.acks,
        "count_frames": stats.count_frames,
        "marked_seen": stats.marked_seen,
        "topic_messages": stats.topic_messages,
        "anomalies": stats.anomalies,
    }


def summary(load: Load, args: argparse.Namespace, outcome: dict) -> dict[str, Any]:
    samples = outcome["samples"]
    warmup = 0.2 * outcome["elapsed"]
    lost_ids = [nid for ids in outcome["lost"].values() for nid in ids]
    checked = sum(len(load.acked.get(user_name(i), ())) for i in range(load.deliver_devices))
    devices = {"deliver": load.deliver_devices, "count": args.count_devices}
    devices |= {"topic": args.topic_devices, "bad": args.bad_devices}
    return {
        "scenario": "soak",
        "minutes": args.minutes,
        "devices": devices,
        "rates_per_second": {"notify": args.rate, "publish": args.publish_rate},
        "rss_kib_first_last": first_last(samples, "rss_kib"),
        "tasks_first_last": first_last(samples, "tasks"),
        "connections_first_last": first_last(samples, "connections"),
        "rss_kib_growth_per_min": slope_per_minute(samples, "rss_kib", warmup),
        "tasks_growth_per_min": slope_per_minute(samples, "tasks", warmup),
        "idle_before_load": outcome["before"],
        "idle_after_all_clients_left": outcome["after"],
        **counts(load.stats),
        "deliver_notifications_checked": checked,
        "lost": len(lost_ids),
        "lost_ids": lost_ids[:100],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="one minute")
    parser.add_argument("--store", help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--deliver-devices", type=int, default=100, help="one per user")
    parser.add_argument("--count-devices", type=int, default=150)
    parser.add_argument("--topic-devices", type=int, default=100)
    parser.add_argument("--bad-devices", type=int, default=10)
    parser.add_argument("--rate", type=float, default=150.0, help="notifies per second")
    parser.add_argument("--publish-rate", type=float, default=20.0, help="publishes per second")
    args = parser.parse_args()
    if args.quick:
        args.minutes = 1.0
    args.deliver_devices = min(args.deliver_devices, args.users)

    workdir = Path(tempfile.mkdtemp(prefix="tidings-soak-"))
    store = args.store or f"sqlite:///{workdir}/soak.db"
    port = free_port()
    server = start_tidings(
        {"TIDINGS_STORE": store, "TIDINGS_JWT_SECRET": SECRET}, port, workdir / "server.log"
    )
    base = f"http://127.0.0.1:{port}"
    print(f"server pid {server.pid}, log {workdir / 'server.log'}; {args.minutes} min", flush=True)
    try:
        tokens = {s: service_token(store, base, s) for s in ("notify", "publish")}
        load = Load(f"ws://127.0.0.1:{port}/ws", base, tokens, args.users, args.deliver_devices)
        outcome = asyncio.run(run(load, args, server.pid))
        alive = server.poll() is None
    finally:
        stop(server)
    result = summary(load, args, outcome)
    result["server_alive_at_end"] = alive
    result["server_log_tracebacks"] = (workdir / "server.log").read_text().count("Traceback")
    report("soak", result)


if __name__ == "__main__":
    main()
