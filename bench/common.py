"""Helpers shared by the benchmark scenarios: servers on free ports, result files."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
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
