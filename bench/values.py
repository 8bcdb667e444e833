"""Value types and ids, per operation: building the hot value types, writing a notification's
wire form, encoding and decoding a count event, making sorted ids. Nanoseconds per operation
(the best of 5 repeats of N calls), for this checkout and optionally a base build, interleaved
(each round runs A then B, the next B then A) so a drift of the machine falls on both alike.

    python bench/values.py                                # this checkout only
    git worktree add /tmp/vbase <commit>
    python bench/values.py --base /tmp/vbase --rounds 3   # base vs this checkout

A build is a checkout: its ``src`` is put first on ``PYTHONPATH`` of a child process that
measures, so both builds run with the same interpreter and dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import report

HERE = Path(__file__).parent
NUMBER = 100_000


def measure() -> dict[str, float]:
    """ns per operation of every case, in the build on ``sys.path``."""
    import orjson

    from tidings.core import events

    try:
        from tidings.core import ids
    except ImportError:  # builds before the layering kept them in storage/_common.py
        from tidings.storage import _common as ids  # type: ignore[no-redef]
    from tidings.core.models import Notification, NotifyResult, UnseenCount, utcnow

    now = utcnow()
    data = {"title": "hello", "n": 1}
    note = Notification("n1", "u1", data, now, None, 3)
    count = UnseenCount("u1", 4, 9)
    event = orjson.loads(events.encode_count(count, "node-1", 3))
    cases: dict[str, Any] = {
        "Notification(...)": lambda: Notification("n1", "u1", data, now, None, 3),
        "UnseenCount(...)": lambda: UnseenCount("u1", 4, 9),
        "NotifyResult(...)": lambda: NotifyResult(note, True, count),
        "orjson.dumps(note.to_dict())": lambda: orjson.dumps(note.to_dict()),
        "events.encode_count": lambda: events.encode_count(count, "node-1", 3),
        "events.decode_count": lambda: events.decode_count(event),
        "ids.new_sorted_id()": ids.new_sorted_id,
        "ids.new_sorted_ids(100) / 100": lambda: ids.new_sorted_ids(100),
    }
    result = {}
    for name, case in cases.items():
        best = min(timeit.repeat(case, number=NUMBER // 10, repeat=5)) / (NUMBER // 10)
        per = best / 100 if "/ 100" in name else best
        result[name] = round(per * 1e9, 1)
    return result


def run_build(checkout: Path) -> dict[str, float]:
    """:func:`measure` in a child process with ``checkout``'s src first on the path."""
    env = dict(os.environ, PYTHONPATH=str(checkout / "src"))
    out = subprocess.run(
        [sys.executable, __file__, "--worker"], env=env, check=True, capture_output=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="a checkout to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure()))
        return
    builds = {"work": HERE.parent}
    if args.base:
        builds = {"base": args.base.resolve(), **builds}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    for round_ in range(args.rounds):
        order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
        for name in order:
            runs[name].append(run_build(builds[name]))
    cases = list(runs["work"][0])
    result: dict[str, Any] = {"unit": "ns per operation, median of rounds", "rounds": args.rounds}
    for case in cases:
        medians = {
            name: statistics.median(r[case] for r in runs[name] if case in r) for name in builds
        }
        result[case] = medians if len(builds) > 1 else medians["work"]
    report("values", result)


if __name__ == "__main__":
    main()
