"""The docs test's own machinery, on small documents made here (no live node: a stand-in)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from docsnippets import SnippetFailed, Walkthrough, parse


@dataclass
class StandIn:
    """What a walkthrough reads of its node, without a process behind it."""

    db_path: Path
    port: int = 8765

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def environment(self) -> dict[str, str]:
        return {"TIDINGS_JWT_SECRET": "s" * 40}

    def log(self) -> str:
        return ""

    def stop(self) -> None:
        pass


def document(tmp_path: Path, text: str) -> Path:
    doc = tmp_path / "doc.md"
    doc.write_text(textwrap.dedent(text).lstrip("\n"))
    return doc


def run_all(tmp_path: Path, text: str) -> Walkthrough:
    """Run every block of ``text`` in order; a failure propagates."""
    doc = document(tmp_path, text)
    blocks, errors = parse(doc)
    assert not errors
    folder = tmp_path / "work"
    folder.mkdir()
    walkthrough = Walkthrough(doc, folder, StandIn)
    try:
        for block in blocks:
            if block.runs:
                walkthrough.run(block)
    finally:
        walkthrough.close()
    return walkthrough


def fresh(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def failure(tmp_path: Path, text: str) -> str:
    with pytest.raises(SnippetFailed) as raised:
        run_all(tmp_path, text)
    return str(raised.value)


def test_markers_need_a_reason_and_a_fence(tmp_path: Path) -> None:
    doc = document(
        tmp_path,
        """
        <!-- not-run: needs a Kubernetes cluster -->
        ```sh
        kubectl apply -f x.yaml
        ```

        <!-- not-run -->
        ```sh
        true
        ```

        <!-- not-run: a marker with no block after it -->
        Some prose.

        ```console
        $ tidings serve
        ```

        ```
        tidings serve
        ```

        <!-- background: only for shell blocks -->
        ```python
        pass
        ```

        Quoted, a marker is no marker: `<!-- not-run: why -->`, nor in a block:

        ```text
        <!-- not-run: why -->
        ```
        """,
    )
    blocks, errors = parse(doc)
    assert [(b.line, b.language, b.marker, b.runs) for b in blocks] == [
        (2, "sh", "not-run", False),
        (7, "sh", "not-run", False),
        (14, "console", None, False),
        (18, "", None, False),
        (23, "python", "background", True),
        (29, "text", None, False),
    ]
    assert blocks[0].reason == "needs a Kubernetes cluster"
    assert [error.split(": ", 1)[0] for error in errors] == [
        f"{doc}:6",  # no reason
        f"{doc}:14",  # unknown language
        f"{doc}:18",  # a command without a language
        f"{doc}:23",  # background on Python
        f"{doc}:11",  # a marker on no block
    ]


def test_a_failing_command_is_named_with_its_line(tmp_path: Path) -> None:
    message = failure(
        tmp_path,
        """
        Prose.

        ```sh
        echo one
        false
        echo never
        ```
        """,
    )
    assert message.startswith(f"{tmp_path / 'doc.md'}:3: sh block exited with 1")
    assert f"{tmp_path / 'doc.md'}:5: exit 1: false" in message
    assert "never" not in message.split("--- stdout ---")[1]


def test_pipes_and_unset_variables_fail(tmp_path: Path) -> None:
    assert "exited with 1" in failure(tmp_path, "```sh\nfalse | cat\n```\n")
    unset = '```sh\necho "$NOT_SET_ANYWHERE"\n```\n'
    assert "exited with 1" in failure(fresh(tmp_path, "unset"), unset)


def test_one_terminal_per_file(tmp_path: Path) -> None:
    """Variables, exports, functions and the folder carry over; a background block is another
    terminal; Python blocks get the environment and folder the shell left."""
    walkthrough = run_all(
        tmp_path,
        """
        ```sh
        PLAIN=plain
        export EXPORTED=exported
        greet() { echo "hello $1"; }
        mkdir -p sub && cd sub
        ```

        <!-- background: another terminal -->
        ```sh
        export FROM_BACKGROUND=1
        sleep 30
        ```

        ```sh
        test "$PLAIN" = plain && test "$EXPORTED" = exported
        test "$(greet you)" = "hello you"
        test "$(basename "$PWD")" = sub
        test -z "${FROM_BACKGROUND:-}"
        echo '{"shown": "yes", "id": 7}'
        # {"shown": "yes", "id": …}
        ```

        ```python
        import os
        from pathlib import Path

        assert os.environ["EXPORTED"] == "exported" and "PLAIN" not in os.environ
        print(Path.cwd().name)  # sub
        ```
        """,
    )
    assert walkthrough.backgrounds[0].process.poll() is not None  # stopped at close()


def test_output_shown_in_comments_is_checked(tmp_path: Path) -> None:
    message = failure(tmp_path, '```sh\necho \'{"count": 1}\'\n# {"count": 2}\n```\n')
    assert 'did not print what its comments show:\n  {"count": 2}' in message
    message = failure(fresh(tmp_path, "py"), "```python\nprint(1 + 1)  # 3\n```\n")
    assert "did not print what its comments show:\n  3" in message


def test_python_runs_as_python_m_asyncio_does(tmp_path: Path) -> None:
    run_all(
        tmp_path,
        """
        ```python
        import asyncio

        await asyncio.sleep(0)
        print("awaited")  # awaited
        ```

        ```python
        # script.py: written, not run
        raise SystemExit("never run here")
        ```

        ```sh
        if python script.py 2> said.txt; then exit 1; fi
        grep -q "never run here" said.txt
        ```
        """,
    )


def test_a_python_traceback_names_the_document_line(tmp_path: Path) -> None:
    message = failure(tmp_path, "Prose.\n\n```python\nx = 1\nprint(undefined_name)\n```\n")
    assert f'File "{tmp_path / "doc.md"}", line 5' in message
    assert "NameError" in message


def test_a_block_that_only_works_as_a_file_fails(tmp_path: Path) -> None:
    """At the prompt of python -m asyncio a blank line ends an indented block."""
    message = failure(
        tmp_path,
        """
        ```python
        import asyncio

        async with asyncio.timeout(1):
            x = 1

            print(x)
        ```
        """,
    )
    assert f"{tmp_path / 'doc.md'}:7: typed into `python -m asyncio`" in message


def test_the_node_stands_in_for_make_run(tmp_path: Path) -> None:
    run_all(
        tmp_path,
        """
        ```sh
        test "$TIDINGS_URL" = http://127.0.0.1:8765
        test "$(echo http://127.0.0.1:8000/ws)" = http://127.0.0.1:8765/ws
        test -e .venv/bin/activate && test -e pyproject.toml
        ```
        """,
    )


def test_what_must_not_run_inside_the_test_is_refused(tmp_path: Path) -> None:
    for number, command in enumerate(["make test", "docker run x", ". /opt/app/bin/activate"]):
        message = failure(fresh(tmp_path, str(number)), f"```sh\n{command}\n```\n")
        assert "not-run: why" in message, message


def test_a_command_that_never_ends_needs_a_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("docsnippets.BLOCK_TIMEOUT", 0.5)
    message = failure(tmp_path, "```sh\nsleep 30\n```\n")
    assert "did not finish within" in message and "<!-- background: why -->" in message
