"""Cluster: several ``tidings serve`` nodes sharing one PostgreSQL store and one bus, compared
with one node on the same store and bus in the same run (the machine's speed drifts from run to
run: compare figures of one run only).

    bash bench/setup.sh                      # once: picows and aiohttp
    python bench/cluster.py                  # everything at full size: about 6 minutes
    python bench/cluster.py --quick          # small sizes: about 2 minutes
    python bench/cluster.py --bus redis --nodes 1,3 --only notify,bus
    python bench/cluster.py --bus nats --nodes 2,3 --only storm --devices 5000

Needs PostgreSQL on 127.0.0.1:5432 (user ``postgres``, trust auth), Redis on 6379 and NATS on
4222. A configuration is a bus (``--bus``, default ``redis,nats``) and a number of nodes
(``--nodes``, default ``1,2,3``); each runs in turn. Its nodes (``TIDINGS_NODE_ID`` node-0,
node-1, …, each ``tidings serve`` on its own port) share a PostgreSQL database created for the
configuration and dropped after it, and a bus prefix of their own (``?prefix=``), so no
configuration, or other run, sees another's rows or events. The scenarios (``--only``, default
all) run in this order on each configuration's nodes:

``notify`` — notify latency across nodes. ``--users`` users (default 2,000) with two devices
  each; device ``d`` of user ``u`` is on node ``(u + d) % N``, so with two nodes or more a user's
  two devices are on two different nodes. ``POST /notify`` with a service token at ``--rate``
  per second (1,000), open-loop (sent on schedule whether or not earlier ones were answered),
  request ``i`` to node ``i % N``, for ``--seconds`` (10); before that, ``--warmup`` seconds (1)
  of the same to users without devices, not measured (it opens the nodes' HTTP and database
  connections). ``p50_ms``/``p99_ms``/``max_ms``: from sending a notification's request until a
  count frame with its version (or a later one) has arrived on every device of its user;
  ``lost``: notifications whose count never arrived on one of the devices (within ``--drain``
  seconds after the last request). ``local_p50_ms`` / ``remote_p50_ms`` / ``remote_p99_ms``: the
  same per device, for devices on the node that took the POST and on another node (a node hears
  its own count events from the broker too, so both cross the bus). ``cpu_ms_per_notify``: CPU
  time (utime + stime, ``/proc/PID/stat``) of all the nodes together from the first request
  until ``--drain`` after the last, per notification; ``postgres_cpu_ms_per_notify`` the same
  for the local PostgreSQL server's processes. ``bus_publish_failures`` (here and in
  ``storm``): count events the nodes' bus refused meanwhile (the nodes'
  ``tidings_bus_publish_failures``); each was delivered on its own node at once and to the other
  nodes when re-published, 0.1 s or more later.

``fanout`` — fan-out over nodes. ``--subscribers`` devices (1,000) subscribed to one topic,
  subscriber ``i`` on node ``i % N``; ``--messages`` messages (3,000) published with
  ``POST /publish`` to node-0, ``--inflight`` (4) in flight, as ``bench/fanout.py`` does.
  ``delivered_per_second``: messages received by all the subscribers together, divided by the
  time from the first publish until the last message arrived; ``cpu_us_per_delivered``: CPU time
  of all the nodes together over the same span, divided by the messages delivered (so N nodes
  compare with one); ``lost``: subscribers x messages minus delivered.

``storm`` — SIGKILL storm, on configurations of two nodes or more. ``--devices`` deliver-mode
  devices (5,000; ``?deliver=1`` and a ``connection_id`` of their own), one per user, device
  ``i`` on node ``i % N``. First every user gets one notification and every device acknowledges
  it. Then node-0 is killed with SIGKILL. Its devices see their sockets close and, after a random
  pause of up to ``--storm-jitter`` seconds (0.5; a client's backoff), reconnect to a random
  other node, and to another one again after a refusal (503, connection refused). From the
  kill on, ``--storm-missed`` notifications (3) are sent to every other user (users 0, 2, 4, …:
  half of the killed node's devices, half of the others) through the surviving nodes
  (``POST /notify/batch`` of ``--storm-batch`` items, 500, two in flight per node; the first
  round went through every node the same way), so that counts and queues change while the
  devices are away. A device is *recovered* once it is connected (welcome received), its latest
  count frame since that welcome equals the number of notifications its user was sent (nothing
  is marked seen: that is the store's unseen count), and every notification of its user came in
  deliver mode and its ``ack`` was answered. ``reconnected_s``: from the kill until the last of
  the killed node's devices had its welcome from another node (the plain reconnect-storm figure;
  ``reconnected_p50_s`` the median device); ``recovered_s``: until the last of them was
  recovered (``recovered_p50_s``, ``recovered_p99_s`` over them); ``sent_s``: until the last
  notification of the storm was answered (a floor of ``recovered_s``); ``failed_killed`` /
  ``failed_others``: devices of the killed node / of the other nodes not recovered after
  ``--storm-timeout`` seconds (60), with the first reasons in ``failure_examples``;
  ``unsettled_before_kill``: devices that had not acknowledged the first round within that
  time; ``refusals``: reconnections refused; ``redelivered``: notifications a device was sent
  again (allowed: delivery is at least once); ``survivors_cpu_s`` / ``postgres_cpu_s``: CPU
  of the surviving nodes / of the local PostgreSQL from the kill until the devices settled.

``bus`` — the bus's share of the cross-node latency, three figures. (1) During the notify
  scenario a separate process pings the broker with a tiny client of the library the bus uses
  (redis-py ``PUBLISH``/``SUBSCRIBE``, nats-py), publishing on one connection and receiving on
  another, 100 messages of ~200 bytes per second: ``ping_p50_ms``/``ping_p99_ms`` are the
  broker's own publish-to-receive time on the loaded machine. (2) The nodes' own
  ``tidings_bus_lag_seconds`` (``GET /metrics``, before and after the notify scenario): the age
  of count events from other nodes when they reach the receiving node's handler, from just
  before the sending node published them; ``bus_lag_mean_ms`` and ``bus_lag_p99_le_ms`` (the
  bucket bound under which 99 % fall), none for one node, which hears only its own events;
  ``notify_mean_ms`` is ``tidings_notify_seconds`` beside it (notify call until committed and
  the count event published). (3) Once per run, first, the notify scenario on one node with
  ``memory://`` (configuration ``1 node, no bus``: the count goes from the commit to the sockets
  within the process); against ``1 node, redis`` / ``1 node, nats`` it shows what the broker's
  round trip costs one node in latency and CPU. Selecting ``bus`` runs the notify scenario.

Each scenario's figures are printed as it ends; at the end a table of the main figures, one line
per configuration, and everything in ``bench/results/cluster-*.json``. The load generator
(picows clients, aiohttp) runs in ``--workers`` processes (2) and the main process beside the
nodes, on the same cores: on a 2-core machine three nodes share two cores with it, PostgreSQL
and the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from picows import WSInvalidStatusError

sys.path.insert(0, str(Path(__file__).parent))
from common import ProcessCpu, free_port, percentile, save, service_token, start_tidings, stop
from connections import cpu_seconds
from fanout import publish_all, tidings_payload, tidings_subscriber
from loadgen import Client, open_client, open_many

from tidings.auth.jwt import JwtAuthenticator

SECRET = "bench-secret-" + "z" * 40  # the same as fanout.py's, whose subscribers sign with it
PG = "postgresql://postgres@127.0.0.1:5432"
BUSES = {"redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}
SCENARIOS = ("notify", "fanout", "storm", "bus")
#: sizes of --quick (about two minutes for both buses and 1, 2 and 3 nodes)
QUICK = {
    "users": 300,
    "rate": 300,
    "seconds": 3.0,
    "drain": 2.0,
    "warmup": 0.5,
    "subscribers": 300,
    "messages": 200,
    "devices": 600,
    "storm_timeout": 30.0,
}


def ms(seconds: float | None, digits: int = 2) -> float | None:
    return None if seconds is None else round(seconds * 1000, digits)


def show(title: str, result: dict[str, Any]) -> None:
    print(f"-- {title}")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"   {key:<{width}}  {value}")
    sys.stdout.flush()


# The cluster


def database(statement: str) -> None:
    """Run one statement on the server's ``postgres`` database (CREATE/DROP DATABASE)."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(f"{PG}/postgres")
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@dataclass
class Cluster:
    label: str
    bus: str  # redis, nats or memory
    bus_url: str
    store: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    token: str = ""

    @property
    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    @property
    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{p}/ws" for p in self.ports]

    def cpu(self) -> float:
        """utime + stime of the nodes still running, in seconds."""
        return sum(cpu_seconds(p.pid) for p in self.procs if p.poll() is None)


@contextlib.contextmanager
def cluster(bus: str, nodes: int, tag: str, workdir: Path) -> Iterator[Cluster]:
    """``nodes`` nodes on a fresh database and bus prefix; stopped and dropped afterwards."""
    db = f"bench_cluster_{os.getpid()}_{tag}"
    if bus == "redis":
        bus_url = f"{BUSES['redis']}?prefix=bench-cluster-{os.getpid()}-{tag}:"
    elif bus == "nats":
        bus_url = f"{BUSES['nats']}?prefix=benchcluster{os.getpid()}{tag}"
    else:
        bus_url = "memory://"
    label = f"{nodes} node{'s' if nodes > 1 else ''}, {'no bus' if bus == 'memory' else bus}"
    database(f'CREATE DATABASE "{db}"')
    found = Cluster(label, bus, bus_url, f"{PG}/{db}")
    try:
        found.ports = [free_port() for _ in range(nodes)]

        def start(i: int) -> subprocess.Popen[bytes]:
            env = {
                "TIDINGS_STORE": found.store,
                "TIDINGS_BUS": bus_url,
                "TIDINGS_NODE_ID": f"node-{i}",
                "TIDINGS_JWT_SECRET": SECRET,
            }
            proc = start_tidings(env, found.ports[i], workdir / f"{tag}-node-{i}.log")
            found.procs.append(proc)
            return proc

        # Together: migrations run under an advisory lock, so nodes may start at once.
        with ThreadPoolExecutor(nodes) as pool:
            procs = list(pool.map(start, range(nodes)))
        found.procs = procs
        found.token = service_token(found.store, found.bases[0], "notify,publish")
        yield found
    finally:
        for proc in found.procs:
            stop(proc)
        for _ in range(3):  # a pool connection may linger a moment after its node exited
            try:
                database(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                break
            except Exception as exc:
                print(f"drop {db}: {exc!r}", file=sys.stderr)
                time.sleep(1)


SERIES = ("tidings_bus_lag_seconds", "tidings_notify_seconds", "tidings_bus_publish_failures")


def scrape(bases: list[str]) -> dict[str, float]:
    """The nodes' :data:`SERIES` from ``GET /metrics``, summed over the nodes."""
    totals: dict[str, float] = {}
    for base in bases:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(SERIES):
                key, _, value = line.rpartition(" ")
                totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def failures(before: dict[str, float], after: dict[str, float]) -> int:
    """Count events the nodes' bus refused between the scrapes (then re-published later)."""
    key = "tidings_bus_publish_failures_total"
    return int(after.get(key, 0.0) - before.get(key, 0.0))


def histogram(name: str, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Mean and 99th-percentile bucket bound (ms) of what ``name`` observed between scrapes."""
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    if count <= 0:
        return {"count": 0, "mean_ms": None, "p99_le_ms": None}
    buckets = []
    for key, value in after.items():
        if key.startswith(f"{name}_bucket{{"):
            bound = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), value - before.get(key, 0.0)))
    buckets.sort()
    p99 = next((b for b, cumulative in buckets if cumulative >= 0.99 * count), None)
    return {
        "count": int(count),
        "mean_ms": ms(total / count, 3),
        "p99_le_ms": None if p99 is None or p99 == float("inf") else ms(p99, 3),
    }


# Notify latency across nodes


async def notify_devices(
    urls: list[str], users: list[int], ready: Any, done: Any
) -> tuple[list[tuple[int, int, int, float]], int]:
    """Two devices per user, device ``d`` on node ``(user + d) % N``; returns (user, device,
    version, received at) of every count frame, and how many devices failed to connect."""
    auth = JwtAuthenticator(SECRET)
    seen: list[tuple[int, int, int, float]] = []
    plan = [(user, device) for user in users for device in range(2)]

    async def open_device(i: int) -> Client:
        user, device = plan[i]
        token = auth.issue(f"n-{user}")
        client = await open_client(
            urls[(user + device) % len(urls)], {"Authorization": f"Bearer {token}"}
        )
        await client.expect(b'{"type":"welcome"')

        def on_text(_: Client, message: bytes) -> None:
            if message.startswith(b'{"type":"newNotificationCountChanged"'):
                version = orjson.loads(message)["version"]
                if version:
                    seen.append((user, device, version, time.time()))

        client.on_text = on_text
        return client

    sockets, failed = await open_many(len(plan), open_device)
    ready.put(len(sockets))
    while not done.is_set():  # noqa: ASYNC110 - a multiprocessing event
        await asyncio.sleep(0.2)
    for client in sockets:
        client.close()
    return seen, failed


def notify_worker(urls: list[str], users: list[int], ready: Any, done: Any, out: Any) -> None:
    import uvloop

    out.put(uvloop.run(notify_devices(urls, users, ready, done)))


async def notify_open_loop(
    bases: list[str], token: str, users: int, rate: int, seconds: float, prefix: str = "n"
) -> tuple[dict[int, list[tuple[float, int]]], int]:
    """Request ``i`` notifies user ``{prefix}-{i % users}`` through node ``i % N``, on
    schedule; returns {user: [(sent at, node) in order]} and the number of failed requests."""
    import aiohttp

    sent: dict[int, list[tuple[float, int]]] = {}
    errors = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as http:
        tasks = []

        async def one(i: int) -> None:
            nonlocal errors
            user, node = i % users, i % len(bases)
            body = orjson.dumps({"user_id": f"{prefix}-{user}", "data": {"n": i}})
            sent.setdefault(user, []).append((time.time(), node))
            try:
                async with http.post(f"{bases[node]}/notify", data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 201:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1

        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return sent, errors


async def ping_broker(kind: str, url: str, rate: int, seconds: float) -> tuple[list[float], int]:
    """Publish-to-receive times through the broker with the client library the bus uses, one
    connection publishing and another subscribed, at ``rate`` per second for ``seconds``;
    returns the latencies and how many were sent."""
    latencies: list[float] = []
    pad = "x" * 150  # about the size of a count event
    channel = f"benchclusterping{os.getpid()}"

    def receive(data: bytes) -> None:
        latencies.append(time.time() - orjson.loads(data)["t"])

    async def send_all(send: Callable[[bytes], Awaitable[Any]]) -> int:
        total = int(rate * seconds)
        start = time.perf_counter()
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await send(orjson.dumps({"t": time.time(), "pad": pad}))
        await asyncio.sleep(1.0)  # the last ones arrive
        return total

    if kind == "redis":
        import redis.asyncio as aioredis

        publisher, subscriber = aioredis.from_url(url), aioredis.from_url(url)
        pubsub = subscriber.pubsub()
        await pubsub.subscribe(channel)

        async def read() -> None:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    receive(message["data"])

        reader = asyncio.create_task(read())
        total = await send_all(lambda body: publisher.publish(channel, body))
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await pubsub.aclose()
        await publisher.aclose()
        await subscriber.aclose()
    else:
        import nats

        nats_publisher, nats_subscriber = await nats.connect(url), await nats.connect(url)

        async def deliver(message: Any) -> None:
            receive(message.data)

        await nats_subscriber.subscribe(channel, cb=deliver)
        await nats_subscriber.flush()
        total = await send_all(lambda body: nats_publisher.publish(channel, body))
        await nats_publisher.close()
        await nats_subscriber.close()
    return latencies, total


def ping_worker(kind: str, url: str, rate: int, seconds: float, out: Any) -> None:
    import uvloop

    out.put(uvloop.run(ping_broker(kind, url, rate, seconds)))


def run_notify(found: Cluster, args: argparse.Namespace, bus_figures: bool) -> dict[str, Any]:
    nodes = len(found.ports)
    users = list(range(args.users))
    ready: Any = multiprocessing.Queue()
    out: Any = multiprocessing.Queue()
    pings: Any = multiprocessing.Queue()
    done = multiprocessing.Event()
    procs = [
        multiprocessing.Process(
            target=notify_worker, args=(found.ws_urls, users[i :: args.workers], ready, done, out)
        )
        for i in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    pinger = None
    try:
        connected = sum(ready.get(timeout=300) for _ in procs)
        if args.warmup:  # the nodes' HTTP and database connections open: users without devices
            asyncio.run(
                notify_open_loop(
                    found.bases, found.token, args.users, args.rate, args.warmup, "warm"
                )
            )
        time.sleep(1.0)
        before = scrape(found.bases)
        if bus_figures and found.bus != "memory":
            pinger = multiprocessing.Process(
                target=ping_worker, args=(found.bus, BUSES[found.bus], 100, args.seconds, pings)
            )
            pinger.start()
        cpu0 = found.cpu()
        store_cpu = ProcessCpu(name="postgres")
        store_cpu.start()
        sent, errors = asyncio.run(
            notify_open_loop(found.bases, found.token, args.users, args.rate, args.seconds)
        )
        time.sleep(args.drain)  # the last counts arrive
        cpu = found.cpu() - cpu0
        store_seconds = store_cpu.stop()
        after = scrape(found.bases)
        ping = pings.get(timeout=60) if pinger is not None else None
    finally:
        done.set()
    rows = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join()
    if pinger is not None:
        pinger.join()

    # per device: the versions it got, ascending, and when
    frames: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for seen, _ in rows:
        for user, device, version, at in seen:
            frames.setdefault((user, device), []).append((version, at))
    for got in frames.values():
        got.sort()
    arrivals = {key: ([v for v, _ in got], [t for _, t in got]) for key, got in frames.items()}
    latencies: list[float] = []
    local: list[float] = []
    remote: list[float] = []
    lost = 0
    for user, times in sent.items():
        for version, (sent_at, node) in enumerate(times, start=1):
            worst = 0.0
            for device in range(2):
                versions, ats = arrivals.get((user, device), ([], []))
                k = bisect_left(versions, version)
                if k == len(versions):
                    lost += 1
                    break
                latency = ats[k] - sent_at  # the first frame with this version or a later one
                (local if (user + device) % nodes == node else remote).append(latency)
                worst = max(worst, latency)
            else:
                latencies.append(worst)
    for figures in (latencies, local, remote):
        figures.sort()
    notifications = sum(len(v) for v in sent.values())
    result: dict[str, Any] = {
        "devices": connected,
        "devices_failed": sum(failed for _, failed in rows),
        "notifications": notifications,
        "http_errors": errors,
        "lost": lost,
        "p50_ms": ms(percentile(latencies, 0.5)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(latencies[-1] if latencies else None),
        "local_p50_ms": ms(percentile(local, 0.5)),
        "remote_p50_ms": ms(percentile(remote, 0.5)),
        "remote_p99_ms": ms(percentile(remote, 0.99)),
        "cpu_ms_per_notify": round(cpu * 1000 / notifications, 3) if notifications else None,
        "postgres_cpu_ms_per_notify": (
            round(store_seconds * 1000 / notifications, 3) if notifications else None
        ),
        "bus_publish_failures": failures(before, after),
    }
    if bus_figures:
        lag = histogram("tidings_bus_lag_seconds", before, after)
        notify = histogram("tidings_notify_seconds", before, after)
        result.update(
            bus_lag_events=lag["count"],
            bus_lag_mean_ms=lag["mean_ms"],
            bus_lag_p99_le_ms=lag["p99_le_ms"],
            notify_mean_ms=notify["mean_ms"],
        )
        if ping is not None:
            pinged, total = ping
            pinged.sort()
            result.update(
                ping_p50_ms=ms(percentile(pinged, 0.5), 3),
                ping_p99_ms=ms(percentile(pinged, 0.99), 3),
                ping_lost=total - len(pinged),
            )
    return result


# Fan-out over nodes


async def fanout_subscribers(
    urls: list[str], indices: list[int], expected: int, ready: Any, done: Any, out: Any
) -> None:
    """Subscriber ``i`` on node ``i % N``; reports once every one has ``expected`` messages (or
    nothing came for 5 s), then keeps the sockets open until ``done``."""
    sockets, failed = await open_many(
        len(indices), lambda i: tidings_subscriber(urls[indices[i] % len(urls)], indices[i])
    )
    ready.put(len(sockets))
    latencies: list[float] = []
    last = 0.0
    pending = len(sockets)
    finished = asyncio.get_running_loop().create_future()
    got: dict[int, int] = {}

    def on_text(client: Client, message: bytes) -> None:
        nonlocal last, pending
        data = tidings_payload(message)
        if data is None:
            return
        last = time.time()
        latencies.append(last - data["t"])
        n = got[id(client)] = got.get(id(client), 0) + 1
        if n == expected:
            pending -= 1
            if not pending and not finished.done():
                finished.set_result(None)

    for client in sockets:
        client.on_text = on_text
    started = time.time()
    while sockets and not finished.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(finished), 0.2)
        quiet = time.time() - (last or started)
        if quiet > (5 if last else 120):
            break
    out.put({"latencies": latencies, "last": last, "failed": failed})
    while not done.is_set():  # noqa: ASYNC110 - a multiprocessing event
        await asyncio.sleep(0.2)
    for client in sockets:
        client.close()


def fanout_worker(
    urls: list[str], indices: list[int], expected: int, ready: Any, done: Any, out: Any
) -> None:
    import uvloop

    uvloop.run(fanout_subscribers(urls, indices, expected, ready, done, out))


def run_fanout(found: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    ready: Any = multiprocessing.Queue()
    out: Any = multiprocessing.Queue()
    done = multiprocessing.Event()
    indices = list(range(args.subscribers))
    procs = [
        multiprocessing.Process(
            target=fanout_worker,
            args=(found.ws_urls, indices[i :: args.workers], args.messages, ready, done, out),
        )
        for i in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    try:
        connected = sum(ready.get(timeout=300) for _ in procs)
        time.sleep(0.5)
        cpu0 = found.cpu()
        headers = {"Authorization": f"Bearer {found.token}"}
        started = asyncio.run(
            publish_all(f"{found.bases[0]}/publish", headers, args.messages, args.inflight)
        )
        results = [out.get(timeout=300) for _ in procs]
        cpu = found.cpu() - cpu0
    finally:
        done.set()
    for proc in procs:
        proc.join()
    latencies = sorted(x for r in results for x in r["latencies"])
    elapsed = max(r["last"] for r in results) - started
    delivered = len(latencies)
    return {
        "subscribers": connected,
        "subscribers_failed": sum(r["failed"] for r in results),
        "messages": args.messages,
        "delivered": delivered,
        "lost": connected * args.messages - delivered,
        "seconds": round(elapsed, 2),
        "delivered_per_second": round(delivered / elapsed) if delivered else 0,
        "latency_p50_ms": ms(percentile(latencies, 0.5), 1),
        "latency_p99_ms": ms(percentile(latencies, 0.99), 1),
        "server_cpu_s": round(cpu, 2),
        "cpu_us_per_delivered": round(cpu * 1e6 / delivered, 3) if delivered else None,
    }


# SIGKILL storm


class StormDevice:
    """A deliver-mode device that reconnects to another node when its socket closes."""

    def __init__(self, user: int, node: int, token: str) -> None:
        self.user = user
        self.first_node = self.node = node
        self.token = token
        self.cid = f"storm-device-{user:08d}"
        self.client: Client | None = None
        self.welcomed_at = 0.0
        self.welcomes = 0
        self.count: int | None = None  # the latest count since the latest welcome
        self.count_at = 0.0
        self.acked: dict[str, float] = {}  # notification id -> when its ack was answered
        self.unanswered: dict[int, str] = {}  # ack frame id -> notification id
        self.frame_id = 0
        self.deliveries = 0  # notification frames, repeats included
        self.refused = 0  # connection attempts refused (503, node down)
        self.errors: list[str] = []

    async def connect(self, url: str) -> StormDevice:
        client = await open_client(
            f"{url}?deliver=1&connection_id={self.cid}", {"Authorization": f"Bearer {self.token}"}
        )
        welcome = await client.expect(b'{"type":"welcome"')
        self.welcomes += 1
        self.welcomed_at = time.time()
        self.count = None
        self.unanswered.clear()
        self.client = client
        while client.inbox:
            self.on_text(client, client.inbox.popleft())
        client.on_text = self.on_text
        if self.welcomes == 1:
            assert orjson.loads(welcome)["connection_id"] == self.cid
        return self

    def on_text(self, client: Client, message: bytes) -> None:
        now = time.time()
        if message.startswith(b'{"type":"newNotificationCountChanged"'):
            count = orjson.loads(message)["count"]
            if count != self.count:
                self.count, self.count_at = count, now
        elif message.startswith(b'{"type":"notification"'):
            notification_id = orjson.loads(message)["notification"]["notification_id"]
            self.deliveries += 1
            self.frame_id += 1
            self.unanswered[self.frame_id] = notification_id
            ack = {"type": "ack", "id": self.frame_id, "notification_ids": [notification_id]}
            client.send(orjson.dumps(ack))
        elif message.startswith(b'{"type":"reply"'):
            notification_id = self.unanswered.pop(orjson.loads(message).get("id"), "")
            if notification_id:
                self.acked.setdefault(notification_id, now)
        elif message.startswith(b'{"type":"error"') and len(self.errors) < 3:
            self.errors.append(message.decode()[:200])

    async def watch(self, urls: list[str], jitter: float, stopping: asyncio.Event) -> None:
        """Reconnect to a random other node whenever the socket closes, until ``stopping``."""
        while not stopping.is_set():
            assert self.client is not None
            await self.client.closed
            self.client = None
            if stopping.is_set():
                return
            await asyncio.sleep(random.uniform(0, jitter))
            while not stopping.is_set():
                self.node = random.choice([k for k in range(len(urls)) if k != self.node])
                try:
                    await self.connect(urls[self.node])
                    break
                except (WSInvalidStatusError, OSError, TimeoutError, ConnectionError):
                    self.refused += 1
                    await asyncio.sleep(random.uniform(0.05, 0.3))

    def recovered(self, ids: list[str]) -> float | None:
        """When this device had everything of ``ids`` (None: not yet)."""
        if self.client is None or self.count != len(ids):
            return None
        acks = [self.acked.get(i) for i in ids]
        if None in acks:
            return None
        return max([self.welcomed_at, self.count_at, *(a for a in acks if a is not None)])

    def why(self, ids: list[str]) -> str:
        if self.client is None:
            return f"not connected ({self.refused} refusals)"
        if self.count != len(ids):
            return f"count {self.count}, expected {len(ids)}"
        missing = [i for i in ids if i not in self.acked]
        return f"{len(missing)} of {len(ids)} notifications not delivered+acked, e.g. {missing[0]}"


async def storm_devices(
    urls: list[str], users: list[int], jitter: float, ready: Any, inbox: Any, out: Any
) -> None:
    auth = JwtAuthenticator(SECRET)
    devices = [StormDevice(u, u % len(urls), auth.issue(f"s-{u}")) for u in users]
    opened, _ = await open_many(len(devices), lambda i: devices[i].connect(urls[devices[i].node]))
    stopping = asyncio.Event()
    watchers = [asyncio.create_task(d.watch(urls, jitter, stopping)) for d in opened]
    ready.put(len(opened))
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, inbox.get)
        if command is None:
            break
        expected, timeout = command  # {user: [notification ids]}, seconds
        deadline = time.time() + timeout
        waiting = list(opened)
        while waiting and time.time() < deadline:
            waiting = [d for d in waiting if d.recovered(expected[d.user]) is None]
            await asyncio.sleep(0.05)
        out.put(
            [
                {
                    "user": d.user,
                    "first_node": d.first_node,
                    "node": d.node,
                    "welcomes": d.welcomes,
                    "welcomed_at": d.welcomed_at,
                    "recovered_at": d.recovered(expected[d.user]),
                    "why": None if d.recovered(expected[d.user]) else d.why(expected[d.user]),
                    "redelivered": d.deliveries - len(set(d.acked) | set(d.unanswered.values())),
                    "refused": d.refused,
                    "errors": d.errors,
                }
                for d in opened
            ]
        )
    stopping.set()
    for device in opened:
        if device.client is not None:
            device.client.close()
    await asyncio.gather(*watchers, return_exceptions=True)


def storm_worker(
    urls: list[str], users: list[int], jitter: float, ready: Any, inbox: Any, out: Any
) -> None:
    import uvloop

    uvloop.run(storm_devices(urls, users, jitter, ready, inbox, out))


async def notify_batches(
    bases: list[str], token: str, items: list[tuple[int, str]], size: int = 500
) -> tuple[dict[int, list[str]], int, float]:
    """``POST /notify/batch`` of (user, notification id) items, batches round-robin over
    ``bases``, two in flight per node; returns the ids answered 201/200 per user, the number of
    items refused or lost with their request, and when the last answer came."""
    import aiohttp

    accepted: dict[int, list[str]] = {}
    failed = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    gate = asyncio.Semaphore(2 * len(bases))
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    async with aiohttp.ClientSession() as http:

        async def one(k: int, batch: list[tuple[int, str]]) -> None:
            nonlocal failed
            body = orjson.dumps(
                {
                    "notifications": [
                        {"user_id": f"s-{u}", "notification_id": n, "data": {"n": n}}
                        for u, n in batch
                    ]
                }
            )
            async with gate:
                try:
                    async with http.post(
                        f"{bases[k % len(bases)]}/notify/batch", data=body, headers=headers
                    ) as response:
                        answer = await response.json() if response.status == 200 else None
                except aiohttp.ClientError:
                    answer = None
            if answer is None:
                failed += len(batch)
                return
            for (user, notification_id), item in zip(batch, answer["results"], strict=True):
                if item["status"] in (200, 201):
                    accepted.setdefault(user, []).append(notification_id)
                else:
                    failed += 1

        await asyncio.gather(*(one(k, b) for k, b in enumerate(batches)))
    return accepted, failed, time.time()


def run_storm(found: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    victim = 0
    users = list(range(args.devices))
    ready: Any = multiprocessing.Queue()
    out: Any = multiprocessing.Queue()
    inboxes: list[Any] = [multiprocessing.Queue() for _ in range(args.workers)]
    slices = [users[i :: args.workers] for i in range(args.workers)]
    procs = [
        multiprocessing.Process(
            target=storm_worker,
            args=(found.ws_urls, slices[i], args.storm_jitter, ready, inboxes[i], out),
        )
        for i in range(args.workers)
    ]
    for proc in procs:
        proc.start()

    def wait_for(expected: dict[int, list[str]], timeout: float) -> list[dict[str, Any]]:
        for inbox, part in zip(inboxes, slices, strict=True):
            inbox.put(({u: expected.get(u, []) for u in part}, timeout))
        return [row for _ in procs for row in out.get(timeout=timeout + 120)]

    try:
        connected = sum(ready.get(timeout=300) for _ in procs)
        # Every device's queue and count get one notification, and it is acknowledged.
        expected, failed_before, _ = asyncio.run(
            notify_batches(
                found.bases, found.token, [(u, f"pre-{u}") for u in users], args.storm_batch
            )
        )
        settled = wait_for(expected, args.storm_timeout)
        unsettled = [r for r in settled if r["recovered_at"] is None]
        time.sleep(0.5)

        survivors = [b for k, b in enumerate(found.bases) if k != victim]
        cpu0 = sum(cpu_seconds(p.pid) for k, p in enumerate(found.procs) if k != victim)
        store_cpu = ProcessCpu(name="postgres")
        store_cpu.start()
        before = scrape(survivors)
        killed_at = time.time()
        found.procs[victim].kill()
        found.procs[victim].wait()
        missed = [
            (u, f"down-{u}-{k}") for k in range(args.storm_missed) for u in users if u % 2 == 0
        ]
        more, failed_after, sent_at = asyncio.run(
            notify_batches(survivors, found.token, missed, args.storm_batch)
        )
        for user, ids in more.items():
            expected.setdefault(user, []).extend(ids)
        rows = wait_for(expected, args.storm_timeout)
        cpu = sum(cpu_seconds(p.pid) for k, p in enumerate(found.procs) if k != victim) - cpu0
        store_seconds = store_cpu.stop()
        after = scrape(survivors)
    finally:
        for inbox in inboxes:
            inbox.put(None)
    for proc in procs:
        proc.join(timeout=60)

    killed = [r for r in rows if r["first_node"] == victim]
    others = [r for r in rows if r["first_node"] != victim]
    back = sorted(r["welcomed_at"] - killed_at for r in killed if r["welcomes"] > 1)
    done = sorted(r["recovered_at"] - killed_at for r in killed if r["recovered_at"] is not None)
    unrecovered = [r for r in rows if r["recovered_at"] is None]
    moved_to: dict[int, int] = {}
    for r in killed:
        moved_to[r["node"]] = moved_to.get(r["node"], 0) + 1
    return {
        "devices": connected,
        "devices_failed": len(users) - connected,
        "unsettled_before_kill": len(unsettled),
        "killed_node_devices": len(killed),
        "moved_to": ",".join(f"node-{k}:{n}" for k, n in sorted(moved_to.items())),
        "notified_during_storm": len(missed) - failed_after,
        "notify_failed": failed_before + failed_after,
        "sent_s": round(sent_at - killed_at, 3),
        "reconnected": len(back),
        "reconnected_s": round(back[-1], 3) if len(back) == len(killed) and back else None,
        "reconnected_p50_s": round(percentile(back, 0.5) or 0, 3),
        "recovered_s": round(done[-1], 3) if len(done) == len(killed) and done else None,
        "recovered_p50_s": round(percentile(done, 0.5) or 0, 3),
        "recovered_p99_s": round(percentile(done, 0.99) or 0, 3),
        "failed_killed": sum(1 for r in killed if r["recovered_at"] is None),
        "failed_others": sum(1 for r in others if r["recovered_at"] is None),
        "failure_examples": [f"s-{r['user']}: {r['why']}" for r in unrecovered[:3]],
        "refusals": sum(r["refused"] for r in rows),
        "redelivered": sum(r["redelivered"] for r in rows),
        "error_frames": [e for r in rows for e in r["errors"]][:3],
        "survivors_cpu_s": round(cpu, 2),
        "postgres_cpu_s": store_seconds,
        "bus_publish_failures": failures(before, after),
    }


# The run


SUMMARY = (
    ("notify", "p50_ms", "p50 ms"),
    ("notify", "p99_ms", "p99 ms"),
    ("notify", "max_ms", "max ms"),
    ("notify", "lost", "lost"),
    ("notify", "remote_p50_ms", "remote p50"),
    ("notify", "cpu_ms_per_notify", "cpu ms/notify"),
    ("notify", "bus_lag_mean_ms", "bus lag ms"),
    ("notify", "ping_p50_ms", "ping p50"),
    ("notify", "ping_p99_ms", "ping p99"),
    ("fanout", "delivered_per_second", "fanout msg/s"),
    ("fanout", "cpu_us_per_delivered", "cpu us/msg"),
    ("fanout", "lost", "fanout lost"),
    ("storm", "reconnected_s", "storm back s"),
    ("storm", "recovered_s", "recovered s"),
    ("storm", "failed_killed", "storm failed"),
)


def summary(configs: list[dict[str, Any]]) -> None:
    columns = [
        (scenario, key, title)
        for scenario, key, title in SUMMARY
        if any(key in c.get(scenario, {}) for c in configs)
    ]
    width = max(len(c["config"]) for c in configs)
    print()
    print(f"{'configuration':<{width}}  " + "  ".join(f"{t:>13}" for _, _, t in columns))
    for c in configs:
        cells = []
        for scenario, key, _ in columns:
            value = c.get(scenario, {}).get(key, "-")
            cells.append(f"{'-' if value is None else value!s:>13}")
        print(f"{c['config']:<{width}}  " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bus", default="redis,nats", help="buses to compare: redis,nats")
    parser.add_argument("--nodes", default="1,2,3", help="cluster sizes to compare")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=",".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--users", type=int, default=2000, help="notify: users (2 devices each)")
    parser.add_argument("--rate", type=int, default=1000, help="notify: requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="notify: how long")
    parser.add_argument("--drain", type=float, default=3.0, help="notify: wait for the last")
    parser.add_argument("--warmup", type=float, default=1.0, help="notify: seconds before")
    parser.add_argument("--subscribers", type=int, default=1000, help="fanout: subscribers")
    parser.add_argument("--messages", type=int, default=3000, help="fanout: messages")
    parser.add_argument("--inflight", type=int, default=4, help="fanout: publishes in flight")
    parser.add_argument("--devices", type=int, default=5000, help="storm: deliver-mode devices")
    parser.add_argument("--storm-missed", type=int, default=3, help="storm: per notified user")
    parser.add_argument("--storm-jitter", type=float, default=0.5, help="storm: reconnect pause")
    parser.add_argument("--storm-timeout", type=float, default=60.0, help="storm: give up after")
    parser.add_argument("--storm-batch", type=int, default=500, help="storm: notify/batch size")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    buses = [b for b in args.bus.split(",") if b]
    sizes = [int(n) for n in args.nodes.split(",") if n]
    only = set(args.only.split(","))
    if unknown := (set(buses) - set(BUSES)) | (only - set(SCENARIOS)):
        parser.error(f"unknown: {', '.join(sorted(unknown))}")

    workdir = Path(tempfile.mkdtemp(prefix="tidings-cluster-"))
    print(f"node logs in {workdir}", flush=True)
    plan: list[tuple[str, int]] = [("memory", 1)] if "bus" in only else []
    plan += [(bus, n) for bus in buses for n in sizes]
    configs: list[dict[str, Any]] = []
    began = time.time()
    for index, (bus, nodes) in enumerate(plan):
        row: dict[str, Any] = {"config": f"{nodes} nodes, {bus}", "bus": bus, "nodes": nodes}
        configs.append(row)
        try:
            with cluster(bus, nodes, f"c{index}", workdir) as found:
                row["config"] = found.label
                print(f"== {found.label}", flush=True)
                if "notify" in only or "bus" in only:
                    row["notify"] = run_notify(found, args, bus_figures="bus" in only)
                    show(f"notify, {found.label}", row["notify"])
                if bus == "memory":
                    continue
                if "fanout" in only:
                    row["fanout"] = run_fanout(found, args)
                    show(f"fanout, {found.label}", row["fanout"])
                if "storm" in only and nodes > 1:  # last: it kills node-0
                    row["storm"] = run_storm(found, args)
                    show(f"storm, {found.label}", row["storm"])
        except Exception as exc:
            traceback.print_exc()
            row["error"] = repr(exc)
    summary(configs)
    path = save(
        "cluster",
        {
            "scenario": "cluster",
            "args": vars(args),
            "seconds": round(time.time() - began, 1),
            "configs": configs,
        },
    )
    print(f"took {time.time() - began:.0f}s; written to {path}")


if __name__ == "__main__":
    main()
