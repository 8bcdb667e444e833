"""Two builds of tidings in one sitting, interleaved: each round runs every chosen scenario on
build A, then on build B (the next round B first), so a drift of the machine's speed falls on
both alike. Prints every run's headline figures and the median per build.

    git worktree add /tmp/base <commit>           # the build to compare against
    python bench/compare.py --base /tmp/base --rounds 3 --only fanout,notify,connections,ingest

A build is a checkout: its ``src`` is put first on ``PYTHONPATH`` for the server and the
scenario scripts, so both builds run with the same interpreter and dependencies. The scenario
scripts (and their load generators) are always this checkout's, so only the server differs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import save
from run import HEADLINES, SCENARIOS, newest

HERE = Path(__file__).parent


def run_once(name: str, src: Path, quick: bool) -> dict[str, Any] | None:
    """One scenario against the build whose sources are ``src``; its result rows."""
    script, full, small, prefix = SCENARIOS[name]
    only_tidings = ["--servers", "tidings"] if name == "fanout" else []
    env = dict(os.environ, PYTHONPATH=str(src))
    started = time.time()
    done = subprocess.run(
        [sys.executable, str(HERE / script), *(small if quick else full), *only_tidings],
        env=env,
        check=False,
    )
    return newest(prefix, started) if done.returncode == 0 else None


def numbers(result: dict[str, Any] | None, name: str) -> dict[str, float]:
    """The numeric headline figures of a scenario's first row (tidings' own row)."""
    if result is None:
        return {}
    row = result.get("rows", [result])[0]
    return {k: float(row[k]) for k in HEADLINES[name] if isinstance(row.get(k), int | float)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, type=Path, help="checkout of build A")
    parser.add_argument("--head", type=Path, default=HERE.parent, help="checkout of build B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="fanout,notify,connections,ingest")
    parser.add_argument("--quick", action="store_true", help="run.py's smaller sizes")
    args = parser.parse_args()
    builds = {"base": args.base.resolve() / "src", "head": args.head.resolve() / "src"}
    chosen = [n for n in args.only.split(",") if n]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        n: {b: [] for b in builds} for n in chosen
    }
    for round_ in range(args.rounds):
        order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
        for name in chosen:
            for build in order:
                print(f"== round {round_ + 1}: {name} on {build}", flush=True)
                figures = numbers(run_once(name, builds[build], args.quick), name)
                runs[name][build].append(figures)
                print(f"   {build}: {figures}", flush=True)
    summary: dict[str, Any] = {"rounds": args.rounds, "quick": args.quick, "scenarios": {}}
    print()
    for name in chosen:
        summary["scenarios"][name] = {}
        for build in builds:
            keys = sorted({k for run in runs[name][build] for k in run})
            medians = {
                k: statistics.median(run[k] for run in runs[name][build] if k in run) for k in keys
            }
            summary["scenarios"][name][build] = {"runs": runs[name][build], "median": medians}
            print(f"{name:<12} {build:<5} median {json.dumps(medians)}")
    print(f"written to {save('compare', summary)}")


if __name__ == "__main__":
    main()
