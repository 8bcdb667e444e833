"""Every scenario in one command: runs them one after another (never two at once: they would
share the cores), prints one summary table and writes it as JSON next to each scenario's own.

    bash bench/setup.sh                 # once
    python bench/run.py                 # all scenarios at the sizes docs/benchmarks.md quotes
    python bench/run.py --quick         # smaller sizes, a few minutes in all
    python bench/run.py --only fanout,ingest
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, save

HERE = Path(__file__).parent

#: name -> (script, full arguments, quick arguments, result file prefix)
SCENARIOS: dict[str, tuple[str, list[str], list[str], str]] = {
    "fanout": (
        "fanout.py",
        ["--subscribers", "1000", "--messages", "1000"],
        ["--subscribers", "300", "--messages", "300"],
        "fanout",
    ),
    "notify": (
        "notify_latency.py",
        ["--users", "2000", "--rate", "1000", "--seconds", "10"],
        ["--users", "500", "--rate", "500", "--seconds", "5"],
        "notify_latency",
    ),
    "connections": (
        "connections.py",
        ["--connections", "19800"],
        ["--connections", "3000"],
        "idle_connections",
    ),
    "ingest": (
        "ingest.py",
        ["--seconds", "10", "--k6"],
        ["--seconds", "4", "--k6"],
        "ingest",
    ),
    "ingest-batch": (
        "ingest.py",
        ["--seconds", "10", "--batch", "500", "--concurrency", "16"],
        ["--seconds", "4", "--batch", "500", "--concurrency", "16"],
        "ingest",
    ),
    "reconnect-storm": (
        "reconnect_storm.py",
        ["--devices", "5000", "--missed", "10"],
        ["--devices", "1000", "--missed", "5"],
        "reconnect_storm",
    ),
    "pipeline-webhook": (
        "pipeline.py",
        ["--users", "1000", "--messages", "10", "--channel", "webhook"],
        ["--users", "300", "--messages", "5", "--channel", "webhook"],
        "pipeline-webhook",
    ),
    "pipeline-email": (
        "pipeline.py",
        ["--users", "1000", "--messages", "10", "--channel", "email"],
        ["--users", "300", "--messages", "5", "--channel", "email"],
        "pipeline-email",
    ),
}

#: the figures of each scenario's result that go into the summary
HEADLINES = {
    "fanout": ("server", "delivered_per_second", "latency_p99_ms", "lost"),
    "notify": ("devices", "latency_p50_ms", "latency_p99_ms", "lost"),
    "connections": ("connections", "kib_per_connection", "connects_per_server_cpu_second"),
    "ingest": ("mode", "notifications_per_second", "failed_requests"),
    "ingest-batch": ("mode", "notifications_per_second", "failed_requests"),
    "reconnect-storm": ("devices", "seconds_until_all_acked", "failed_devices"),
    "pipeline-webhook": ("store", "deliveries_per_second", "deliveries_received"),
    "pipeline-email": ("store", "deliveries_per_second", "deliveries_received"),
}


def newest(prefix: str, since: float) -> dict[str, Any] | None:
    files = [p for p in RESULTS.glob(f"{prefix}-*.json") if p.stat().st_mtime >= since]
    if not files:
        return None
    data: dict[str, Any] = json.loads(max(files, key=lambda p: p.stat().st_mtime).read_text())
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--only", help="comma-separated scenario names", default="")
    args = parser.parse_args()
    chosen = [n for n in SCENARIOS if not args.only or n in args.only.split(",")]
    rows: list[dict[str, Any]] = []
    for name in chosen:
        script, full, quick, prefix = SCENARIOS[name]
        started = time.time()
        print(f"== {name}", flush=True)
        done = subprocess.run(
            [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        )
        result = newest(prefix, started) if done.returncode == 0 else None
        if result is None:
            rows.append({"scenario": name, "result": "failed"})
            continue
        for row in result.get("rows", [result]):
            rows.append(
                {
                    "scenario": name,
                    "result": ", ".join(f"{k}={row.get(k)}" for k in HEADLINES[name]),
                }
            )
    print()
    width = max(len(r["scenario"]) for r in rows)
    for row in rows:
        print(f"{row['scenario']:<{width}}  {row['result']}")
    path = save("summary", {"quick": args.quick, "rows": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
