"""tidings.d.ts against the module it describes: a sample application using every export passes
`tsc --noEmit` in strict mode (TypeScript from tests/support), and every member the declarations
name exists on the classes of tidings.js while every public method of theirs is declared (read
with TypeScript's own parser, the module imported in Node)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TYPESCRIPT = ROOT / "tests" / "support" / "node_modules" / "typescript"
WEB = ROOT / "src" / "tidings" / "web"


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None or not TYPESCRIPT.exists():
        message = "node or TypeScript (tests/support, installed by make test) is missing"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_a_sample_using_every_export_type_checks(node: str) -> None:
    done = subprocess.run(
        [node, str(TYPESCRIPT / "bin" / "tsc"), "-p", str(HERE / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_declarations_match_the_module(node: str) -> None:
    done = subprocess.run(
        [node, str(HERE / "check_members.mjs"), str(TYPESCRIPT), str(WEB)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked" in done.stdout
