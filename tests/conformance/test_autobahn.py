"""Autobahn|Testsuite against tidings' WebSocket transport: RFC 6455 conformance.

The fuzzing client (``wstest -m fuzzingclient``, Python 2.7, see wstest_env.py) runs every case
but the excluded groups (fuzzingclient_spec.EXCLUDED: permessage-deflate) against an echo
application served as ``tidings serve`` serves the gateway, but for messages of up to 16 MiB
and no keepalive pings (echo_server.py). Each case's ``behavior`` and ``behaviorClose`` must be
OK, NON-STRICT or INFORMATIONAL, and OK where the transport promises the strict behaviour
(fuzzingclient_spec.STRICT: invalid UTF-8 fails fast, 6.4.*). The whole run takes about 15 s,
plus about 25 s the first time (the virtualenv).

- ``TIDINGS_AUTOBAHN_CASES="6.4.*,7.*"`` runs only those cases;
- ``TIDINGS_AUTOBAHN_REPORTS=dir`` keeps the report there (``dir/index.html``) instead of in
  the test's temporary directory.

Without Python 2.7, or when its virtualenv cannot be built, the test skips, and fails in CI.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from conformance.fuzzingclient_spec import AGENT, EXCLUDED, case_key, failures, write_spec
from conformance.wstest_env import WstestUnavailable, ensure_wstest, python2_environment
from conftest import free_port

HERE = Path(__file__).parent

#: seconds the whole fuzzing client may take (about 15 s here)
WSTEST_TIMEOUT = 300


def unavailable(message: str) -> NoReturn:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def echo_server(workdir: Path) -> Iterator[tuple[int, Path]]:
    """The echo server (echo_server.py) in a child process: ``(port, log file)``."""
    port = free_port()
    log_path = workdir / "echo-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(HERE / "echo_server.py"), "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the echo server exited early:\n{log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the echo server did not listen:\n{log_path.read_text()}"
                    ) from None
                time.sleep(0.05)
        yield port, log_path
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def plain(html: str) -> str:
    """A report's text without its HTML markup."""
    text = re.sub(r"<br\s*/?>", " ", html)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", text)).strip()


def describe(case: str, result: dict[str, Any], reports: Path) -> str:
    """One case: id, behaviours, close code, description and what Autobahn saw."""
    line = (
        f"{case}: behavior {result.get('behavior')}, behaviorClose "
        f"{result.get('behaviorClose')}, server close code {result.get('remoteCloseCode')}"
    )
    try:
        detail = json.loads((reports / result["reportfile"]).read_text())
    except (OSError, KeyError, ValueError):
        return line
    return (
        f"{line}\n    case: {plain(detail.get('description', ''))}"
        f"\n    expected: {plain(detail.get('expectation', ''))}"
        f"\n    result: {plain(detail.get('result', ''))}; close: "
        f"{plain(detail.get('resultClose', ''))}"
    )


@pytest.mark.slow
@pytest.mark.timeout(WSTEST_TIMEOUT + 900)  # a cold virtualenv build included
def test_autobahn_fuzzingclient(tmp_path: Path) -> None:
    try:
        wstest = ensure_wstest()
    except WstestUnavailable as exc:
        unavailable(f"Autobahn|Testsuite is not available: {exc}")
    reports = Path(os.environ.get("TIDINGS_AUTOBAHN_REPORTS") or tmp_path / "reports")
    cases = [c.strip() for c in os.environ.get("TIDINGS_AUTOBAHN_CASES", "").split(",")]
    cases = [c for c in cases if c]

    with echo_server(tmp_path) as (port, server_log):
        spec = write_spec(
            tmp_path / "fuzzingclient.json", f"ws://127.0.0.1:{port}/", reports, cases or None
        )
        started = time.monotonic()
        run = subprocess.run(
            [str(wstest), "-m", "fuzzingclient", "-s", str(spec)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WSTEST_TIMEOUT,
            env=python2_environment(),
        )
        took = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"wstest exited with {run.returncode}:\n{output[-4000:]}"

    planned = re.search(r"will run (\d+) test cases", output)
    assert planned, f"wstest ran no cases:\n{output[-4000:]}"
    index = json.loads((reports / "index.json").read_text())
    results = index.get(AGENT, {})
    assert len(results) == int(planned.group(1)), (
        f"{planned.group(1)} cases planned, {len(results)} reported"
    )

    failed = failures(index)
    verdicts: dict[str, int] = {}
    for result in results.values():
        verdict = f"{result.get('behavior')}/{result.get('behaviorClose')}"
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    print(
        f"\nAutobahn|Testsuite: {len(results)} cases in {took:.0f} s (excluded: "
        f"{', '.join(EXCLUDED)}); " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
    )
    for case, result in sorted(results.items(), key=lambda item: case_key(item[0])):
        if result.get("behavior") != "OK" or result.get("behaviorClose") != "OK":
            print("  " + describe(case, result, reports))
    assert not failed, f"{len(failed)} Autobahn cases failed (report: {reports}/index.html):\n" + (
        "\n".join(describe(case, result, reports) for case, result in failed)
    )
    log = server_log.read_text(errors="replace")
    assert "Traceback" not in log, f"the echo server logged an error:\n{log[-4000:]}"
