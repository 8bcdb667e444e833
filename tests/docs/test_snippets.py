"""The docs' examples are code: every shell and Python block of README.md and docs/*.md runs,
in order, against a live ``tidings serve``, unless a visible marker says why not.

The rules are in ``docsnippets.py`` (and, for writers of the docs, ``tests/docs/README.md``):
``<!-- not-run: why -->`` and ``<!-- background: why -->`` before a fence; blocks of one file
share one terminal's state; output shown in comments is checked.

``TIDINGS_DOCS_KEEP_GOING=1`` runs a file's later blocks even after one failed (by default they
are skipped, naming the block that failed, since a walkthrough's steps build on each other).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from docsnippets import (
    RUNNABLE,
    Block,
    SnippetFailed,
    Walkthrough,
    describe,
    display,
    doc_files,
    parse,
)

from conftest import ServerProcess

pytestmark = pytest.mark.slow

PARSED = {doc: parse(doc) for doc in doc_files()}
BLOCKS = [block for blocks, _ in PARSED.values() for block in blocks if block.language in RUNNABLE]
KEEP_GOING = os.environ.get("TIDINGS_DOCS_KEEP_GOING", "").lower() in ("1", "true", "yes")


def runs_in(doc: Path) -> list[Block]:
    return [block for block in BLOCKS if block.doc == doc and block.runs]


@pytest.mark.parametrize("doc", list(PARSED), ids=display)
def test_markers_and_fences(doc: Path) -> None:
    """Every marker is well-formed and sits on a block; every fence has a known language."""
    errors = PARSED[doc][1]
    assert not errors, "\n".join(errors)


@pytest.fixture(scope="module")
def walkthroughs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, Walkthrough]]:
    """One walkthrough per file: a working folder and a live node, made on first use."""
    registry: dict[Path, Walkthrough] = {}

    def node(db_path: Path) -> ServerProcess:
        # `make run`'s settings: SQLite in the working folder, the in-process bus, the demo.
        return ServerProcess(db_path, env={"TIDINGS_DEMO": "true"}).start()

    class Registry(dict[Path, Walkthrough]):
        def __missing__(self, doc: Path) -> Walkthrough:
            folder = tmp_path_factory.mktemp(f"docs-{doc.stem.lower()}")
            walkthrough = self[doc] = Walkthrough(doc, folder, node)
            return walkthrough

    registry = Registry()
    yield registry
    for walkthrough in registry.values():
        walkthrough.close()


@pytest.mark.parametrize("block", BLOCKS, ids=describe)
def test_snippet(block: Block, walkthroughs: dict[Path, Walkthrough]) -> None:
    """The block runs as written (after the blocks before it in its file) and prints what its
    comments show."""
    if block.marker == "not-run":
        pytest.skip(f"{block.where}: not-run: {block.reason}")
    walkthrough = walkthroughs[block.doc]
    blocks = runs_in(block.doc)
    try:
        # Selected alone (-k), a block still gets the state the blocks before it leave.
        for earlier in blocks[: blocks.index(block)]:
            if earlier.line in walkthrough.done or (walkthrough.failed and not KEEP_GOING):
                continue
            walkthrough.done.add(earlier.line)
            try:
                walkthrough.run(earlier)
            except SnippetFailed as exc:
                walkthrough.failed = earlier
                failure = f"{block.where} comes after a block that failed:\n{exc}"
            else:
                continue
            pytest.fail(failure, pytrace=False)
        if walkthrough.failed and not KEEP_GOING:
            pytest.skip(
                f"{block.where}: not run: {walkthrough.failed.where} failed before it "
                "(TIDINGS_DOCS_KEEP_GOING=1 runs it anyway)"
            )
        walkthrough.done.add(block.line)
        try:
            walkthrough.run(block)
        except SnippetFailed as exc:
            walkthrough.failed, failure = block, str(exc)
        else:
            return
        pytest.fail(failure, pytrace=False)
    finally:
        if block is blocks[-1]:
            walkthrough.close()
