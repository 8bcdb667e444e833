"""Helpers shared by the benchmark scenarios: servers on free ports, result files."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_tidings(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """A `tidings serve` process; returns once /health answers."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    full.update(env, TIDINGS_PORT=str(port), TIDINGS_HOST="127.0.0.1")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--log-level", "warning"],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tidings exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("tidings did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the server has not exited after 10 s (a peer draining 20,000
    connections may take longer, and its figures are already taken)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2))
    return path


def service_token(store: str, base: str, scope: str) -> str:
    """A service token of a fresh client of the node at ``base`` (its store is ``store``)."""
    import orjson

    created = subprocess.run(
        [sys.executable, "-m", "tidings", "clients", "create", "bench", "--scope", scope],
        env={"TIDINGS_STORE": store, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    client = orjson.loads(created.stdout)
    response = httpx.post(
        f"{base}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client["client_id"], client["client_secret"]),
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def percentile(ordered: list[float], p: float) -> float | None:
    """The p-quantile of an ascending list (None when empty)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def report(name: str, result: dict[str, Any]) -> None:
    """Print ``result`` as aligned lines and save it as JSON."""
    path = save(name, result)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(f"written to {path}")


class ProcessCpu:
    """CPU seconds (user + system, from ``/proc``) that processes spent between :meth:`start`
    and :meth:`stop`: one process by pid, or every process of a name (``postgres``: the
    server's backends, which come and go, so they are sampled every ``every`` seconds and each
    one counts from when it was first seen, or from zero if it started meanwhile)."""

    def __init__(self, *, pid: int | None = None, name: str | None = None, every: float = 0.2):
        self.pid, self.name, self.every = pid, name, every
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, *, initial: bool = False) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        pids = (
            [self.pid]
            if self.pid is not None
            else [int(p) for p in os.listdir("/proc") if p.isdigit()]
        )
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            name, fields = (
                stat[stat.index("(") + 1 : stat.rindex(")")],
                stat[stat.rindex(")") + 2 :].split(),
            )
            if self.name is not None and name != self.name:
                continue
            used = (int(fields[11]) + int(fields[12])) / tick
            self.first.setdefault(pid, used if initial else 0.0)
            self.last[pid] = used

    def _run(self) -> None:
        while not self._stopping.wait(self.every):
            self._sample()

    def start(self) -> None:
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """The CPU seconds spent since :meth:`start`."""
        self._sample()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        return round(sum(self.last[pid] - self.first[pid] for pid in self.last), 2)
