"""The React hooks of src/tidings/web/tidings-react.js: vitest (jsdom, @testing-library/react,
from tests/support, installed by make test) runs hooks.test.jsx and the React example of
docs/browser.md (docs.test.jsx) against a live node started here, given its URL, a service
token and a user with a device token per test (live.js), and exports.test.js; and
tidings-react.d.ts type-checks a sample React application (sample.tsx)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ServerProcess, device_token

HERE = Path(__file__).resolve().parent
MODULES = HERE.parents[1] / "support" / "node_modules"
NEEDED = ["vitest", "jsdom", "react", "react-dom", "@testing-library/react", "@types/react"]
NEEDED += ["typescript"]
USERS = ["count", "feed", "topic", "provider", "docs"]


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    missing = [name for name in NEEDED if not (MODULES / name).exists()]
    if found is None or missing:
        message = f"node or npm packages of tests/support ({', '.join(missing) or 'node'}) missing"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_a_sample_react_application_type_checks(node: str) -> None:
    done = subprocess.run(
        [node, str(MODULES / "typescript" / "bin" / "tsc"), "-p", str(HERE / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_hooks_against_a_live_node(
    node: str, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server()
    users = {}
    for name in USERS:
        user_id = f"react-{name}-{uuid.uuid4().hex[:8]}"
        users[name] = {"user_id": user_id, "token": device_token(user_id)}
    env = {
        **os.environ,
        "TIDINGS_REACT_URL": server.url,
        "TIDINGS_REACT_SERVICE_TOKEN": server.service_token("notify", "publish"),
        "TIDINGS_REACT_USERS": json.dumps(users),
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [node, str(MODULES / "vitest" / "vitest.mjs"), "run", "--reporter=verbose"],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    print(done.stdout + done.stderr)  # shown with -rP, or on a failure
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout
