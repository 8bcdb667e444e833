"""Schemathesis against the live server's own OpenAPI document: no request it generates, valid
or not, gets a 5xx. Run as its CLI (the coverage, fuzzing and stateful phases) against a real
``tidings serve`` with SQLite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ServerProcess, device_token

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))


def fuzz(server: ServerProcess, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    if SCHEMATHESIS is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    return subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {token}",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "10",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_service_api_answers_no_5xx(server: ServerProcess) -> None:
    """Every operation, called by a service holding every scope, never answers 5xx."""
    token = server.service_token("notify", "publish", "messages", "admin")
    run = fuzz(server, token, "--exclude-path-regex", "^/me/")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout


def test_user_api_answers_no_5xx(server: ServerProcess) -> None:
    """The user-facing preference routes, called with a device JWT, never answer 5xx."""
    run = fuzz(server, device_token("fuzzed-user"), "--include-path-regex", "^/me/")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
