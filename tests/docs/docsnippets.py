"""Fenced code blocks of the documentation, and a live walkthrough that runs them.

The rules (``tests/docs/README.md`` says the same for writers of the docs):

- Every ```` ```sh ````, ```` ```bash ````, ```` ```shell ```` and ```` ```python ```` block runs.
  Blocks of other languages (``json``, ``html``, no language …) are shown, never run; a language
  the test does not know, or a block without a language that starts like a command, fails.
- ``<!-- not-run: REASON -->`` on the last non-blank line before a fence keeps that block from
  running; the reason is required and shows in pytest's summary of skips.
- ``<!-- background: REASON -->`` runs a shell block in the background (a command that never
  exits: ``tidings listen``); it is stopped once the file's last block has run.
- The blocks of one file run in order, as one reader would in one terminal: exported variables,
  shell variables, functions and the working folder carry over from one shell block to the
  next; Python blocks run with the environment and folder the shell blocks left. A background
  block is another terminal: what it changes does not carry over.
- Each file gets a fresh working folder that looks like a checkout (the repository's top-level
  entries, ``.venv`` included, are symlinked into it, so ``.venv/bin/activate`` and
  ``bench/…`` resolve; what a block writes lands in the folder) and its own live
  ``tidings serve`` with ``make run``'s settings: SQLite ``tidings.db`` in that folder, the
  in-process bus, the demo on. ``127.0.0.1:8000`` and ``localhost:8000`` in a block are replaced
  with the live node's address, and ``TIDINGS_URL``, ``TIDINGS_STORE``, ``TIDINGS_JWT_SECRET``,
  ``TIDINGS_HOST`` and ``TIDINGS_PORT`` point at it; ``PATH`` starts with the virtualenv's
  ``bin``.
- Shell blocks run in bash with ``set -euo pipefail`` (and ``inherit_errexit``); a failing
  command is named with its file and line.
- Python blocks run as ``python -m asyncio`` runs what is typed into it: top-level ``await``
  works. A Python block whose first line is a file name comment (``# app.py``) is written to
  that file in the working folder instead of being run, for a later shell block to use.
- Output written in the docs is checked: in a shell block, a comment line that starts with
  ``# {`` is a line the command prints; in a Python block, a comment after ``print(…)`` is the
  line it prints. ``…`` stands for anything. The lines must appear in that order.
- Refused unless marked: ``make run``/``test``/``lint``/``check``/``bench`` and ``docker``
  (shims in ``shims/``, first on ``PATH``), and a shell block naming a path under ``/opt``,
  ``/etc``, ``/srv``, ``/usr/local`` or ``/var/lib`` (an install or a deployment onto the
  machine). A foreground block may take ``BLOCK_TIMEOUT`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell"})
PYTHON_LANGUAGES = frozenset({"python", "py", "python3"})
RUNNABLE = SHELL_LANGUAGES | PYTHON_LANGUAGES
#: Languages that are shown and never run.
SHOWN = frozenset(
    {"", "text", "json", "jsonc", "html", "js", "javascript", "ts", "yaml", "toml", "ini"}
    | {"http", "diff", "nginx", "dockerfile", "sql", "csv", "mermaid", "systemd"}
)
#: A block without a language that starts like this is a command someone forgot to label.
COMMAND_START = re.compile(
    r"^(\$ |tidings |curl |make |python3? |pip |\.venv/|\. |source |export |docker |uvicorn |cd )"
)

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
MARKER = re.compile(r"^[ \t]*<!--[ \t]*(?P<kind>[\w-]+)[ \t]*(?::(?P<reason>.*?))?[ \t]*-->[ \t]*$")
MARKER_KINDS = ("not-run", "background")
#: Anything that looks like one of our markers, well-formed or not.
MARKER_LIKE = re.compile(r"<!--[ \t]*(not[-_ ]?run|background|skip|no[-_ ]?run)\b", re.I)
FILE_COMMENT = re.compile(r"^#[ \t]*(?P<name>[\w./-]+\.py)\b")
#: A shell block that names one of these installs or deploys onto the machine itself.
OUTSIDE = re.compile(r"(?:^|[\s'\"=:(])(/(?:opt|etc|srv|usr/local|var/lib)/[\w./-]*)")
#: How long one foreground block may take; a command that never exits needs a marker.
BLOCK_TIMEOUT = 30.0
#: How long a background block has to print the lines its comments show.
BACKGROUND_TIMEOUT = 15.0


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    doc: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str  # dedented by the fence's indentation
    marker: str | None = None  # "not-run" | "background"
    reason: str = ""
    length: int = 0  # lines from the opening fence to the closing one

    @property
    def where(self) -> str:
        return f"{display(self.doc)}:{self.line}"

    @property
    def first_code_line(self) -> int:
        return self.line + 1

    @property
    def runs(self) -> bool:
        return self.language in RUNNABLE and self.marker != "not-run"

    @property
    def kind(self) -> str:
        return "sh" if self.language in SHELL_LANGUAGES else "python"


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def doc_files() -> list[Path]:
    """README.md and every page of docs/; ``TIDINGS_DOCS=a.md:b.md`` checks those instead
    (a draft, say)."""
    chosen = os.environ.get("TIDINGS_DOCS", "")
    if chosen:
        return [Path(name).resolve() for name in chosen.split(os.pathsep) if name]
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def parse(doc: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of ``doc``, and what is wrong with its markers or fences."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    errors: list[str] = []
    used_markers: set[int] = set()
    name = display(doc)
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = (opening["info"].split() or [""])[0].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            closing = FENCE.match(lines[i])
            if (
                closing
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"]
            ):
                break
            text = lines[i]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            i += 1
        else:
            errors.append(f"{name}:{start + 1}: the fence opened here is never closed")
        i += 1

        marker = reason = None
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0 and (found := MARKER.match(lines[before])):
            used_markers.add(before)
            marker, reason = found["kind"], (found["reason"] or "").strip()
            if marker not in MARKER_KINDS:
                errors.append(
                    f"{name}:{before + 1}: unknown marker <!-- {marker} -->; "
                    f"known: {', '.join(MARKER_KINDS)}"
                )
                marker = None
            elif not reason:
                errors.append(
                    f"{name}:{before + 1}: <!-- {marker} --> needs a reason: <!-- {marker}: why -->"
                )
        source = "\n".join(body) + "\n"
        block = Block(doc, start + 1, language, source, marker, reason or "", i - start)
        if language not in RUNNABLE and language not in SHOWN:
            errors.append(
                f"{block.where}: ```{language} is neither run nor known to be shown only: "
                "use a language the docs test runs (sh, bash, python) or shows (text, json, …)"
            )
        if language == "" and body and COMMAND_START.match(body[0]):
            errors.append(
                f"{block.where}: a block without a language that starts like a command "
                f"({body[0].strip()[:40]!r}): label it ```sh (it runs) or ```text"
            )
        if marker and language not in RUNNABLE:
            errors.append(f"{block.where}: <!-- {marker} --> on a ```{language} block, never run")
        if marker == "background" and language not in SHELL_LANGUAGES:
            errors.append(f"{block.where}: <!-- background --> is for shell blocks")
        blocks.append(block)

    fenced = {n for block in blocks for n in range(block.line - 1, block.line - 1 + block.length)}
    for number, text in enumerate(lines):
        prose = re.sub(r"`+[^`]*`+", "", text)  # a marker quoted in code is no marker
        if number in fenced or number in used_markers:
            continue
        if MARKER_LIKE.search(prose):
            errors.append(
                f"{name}:{number + 1}: a snippet marker must be alone on the last non-blank "
                f"line before a fence: {text.strip()[:80]}"
            )
    return blocks, errors


def substitute(source: str, port: int) -> str:
    """``make run``'s address replaced with the live node's."""
    return re.sub(r"\b(?:127\.0\.0\.1|localhost):8000\b", f"127.0.0.1:{port}", source)


def expected_output(block: Block) -> list[str]:
    """The output lines the block's comments show."""
    wanted = []
    for text in block.source.splitlines():
        stripped = text.strip()
        if block.kind == "sh":
            if stripped.startswith("# {"):
                wanted.append(stripped[2:].strip())
        elif stripped.startswith("print(") and "  # " in text:
            wanted.append(text.split("  # ", 1)[1].strip())
    return wanted


def output_pattern(shown: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in shown.split("…")))


def missing_lines(wanted: list[str], output: str) -> list[str]:
    """The shown lines that ``output`` does not contain, in order (``…`` matches anything)."""
    lines = output.splitlines()
    at = 0
    for index, shown in enumerate(wanted):
        pattern = output_pattern(shown)
        while at < len(lines) and not pattern.fullmatch(lines[at].strip()):
            at += 1
        if at == len(lines):
            return wanted[index:]
        at += 1
    return []


class SnippetFailed(AssertionError):
    pass


@dataclass
class Background:
    block: Block
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


# What runs around a shell block: the shell's state from the blocks before it, strict options,
# a trap naming the failing line, then the state it leaves for the blocks after it.
SHELL_WRAPPER = r"""
__docs_known=" $(compgen -v | tr '\n' ' ') "
if [ -f "$__DOCS_STATE" ]; then . "$__DOCS_STATE"; fi
cd "$__DOCS_CWD"
set -euo pipefail
shopt -s inherit_errexit
__docs_failed() { echo "docs-snippet: $__DOCS_NAME:$2: exit $1: $3" >&2; }
trap '__docs_failed $? $LINENO "$BASH_COMMAND"' ERR
. "$__DOCS_BLOCK"
trap - ERR
set +euo pipefail
if [ -n "${__DOCS_SAVE:-}" ]; then
  {
    for __docs_v in $(compgen -v); do
      case "$__docs_v" in __docs*|__DOCS*) continue ;; esac
      case "$__docs_known" in *" $__docs_v "*) continue ;; esac
      declare -p "$__docs_v" 2>/dev/null | grep -v '^declare -[a-zA-Z]*r' || true
    done
    declare -f | sed '/^__docs_failed ()/,/^}/d'
  } > "$__DOCS_STATE.new"
  mv "$__DOCS_STATE.new" "$__DOCS_STATE"
  pwd > "$__DOCS_SAVE.cwd"
  env -0 > "$__DOCS_SAVE.env"
fi
"""


@dataclass
class Walkthrough:
    """The blocks of one file, run in order against one live node in one working folder."""

    doc: Path
    workdir: Path
    server_factory: object  # Callable[[Path], ServerProcess]; typed loosely to keep conftest out
    server: object | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    backgrounds: list[Background] = field(default_factory=list)
    groups: list[subprocess.Popen[bytes]] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    failed: Block | None = None
    counter: int = 0

    # -- setup -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.server is not None:
            return
        for entry in REPO.iterdir():
            hidden = entry.name.startswith(".") and entry.name != ".venv"
            local = entry.suffix in (".db", ".db-wal", ".db-shm") or entry.name in ("build", "dist")
            if not hidden and not local and not (self.workdir / entry.name).exists():
                (self.workdir / entry.name).symlink_to(entry)
        self.server = self.server_factory(self.workdir / "tidings.db")  # type: ignore[operator]
        server = self.server
        shims = HERE / "shims"
        venv_bin = Path(sys.executable).parent
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TIDINGS_", "PYTEST_")) and k != "VIRTUAL_ENV"
        }
        env.update(
            PATH=os.pathsep.join([str(shims), str(venv_bin), env.get("PATH", "")]),
            PYTHONUNBUFFERED="1",
            TIDINGS_URL=server.url,  # type: ignore[attr-defined]
            TIDINGS_STORE=server.store_url,  # type: ignore[attr-defined]
            TIDINGS_JWT_SECRET=server.environment()["TIDINGS_JWT_SECRET"],  # type: ignore[attr-defined]
            TIDINGS_HOST="127.0.0.1",
            TIDINGS_PORT=str(server.port),  # type: ignore[attr-defined]
            DOCS_SNIPPETS_REAL_MAKE=_real("make"),
        )
        self.env = env
        self.cwd = self.workdir

    @property
    def port(self) -> int:
        return int(self.server.port)  # type: ignore[union-attr]

    # -- running -----------------------------------------------------------------------------

    def run(self, block: Block) -> None:
        self.start()
        self.counter += 1
        if block.kind == "sh" and (outside := OUTSIDE.search(block.source)):
            raise SnippetFailed(
                f"{block.where}: sh block not run: it names {outside[1]!r}, outside the "
                "throwaway folder the docs test runs in (an install or a deployment would change "
                "this machine): mark it <!-- not-run: why --> before the fence"
            )
        if block.kind == "python":
            self._run_python(block)
        elif block.marker == "background":
            self._start_background(block)
        else:
            self._run_shell(block)

    def _files(self, block: Block, suffix: str) -> Path:
        folder = self.workdir.parent / f"{self.workdir.name}-blocks"
        folder.mkdir(exist_ok=True)
        return folder / f"{self.counter:02d}-line{block.line}{suffix}"

    def _padded(self, block: Block) -> str:
        """The block's source on the lines it has in the document (tracebacks and the shell's
        LINENO then name the document's lines)."""
        return "\n" * (block.first_code_line - 1) + substitute(block.source, self.port)

    def _shell_command(self, block: Block, save: Path | None) -> tuple[list[str], dict[str, str]]:
        # Named as the document, so that bash's own messages name it and the line.
        script = self._files(block, "") / display(block.doc).lstrip("/")
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(self._padded(block))
        env = dict(self.env)
        env.update(
            __DOCS_STATE=str(self.workdir.parent / f"{self.workdir.name}-blocks" / "shell-state"),
            __DOCS_CWD=str(self.cwd),
            __DOCS_NAME=display(block.doc),
            __DOCS_BLOCK=str(script),
            __DOCS_SAVE=str(save) if save else "",
        )
        return ["bash", "-c", SHELL_WRAPPER], env

    def _popen(
        self, command: list[str], env: dict[str, str], out: Path, err: Path | None
    ) -> subprocess.Popen[bytes]:
        with out.open("wb") as stdout:
            stderr_file = err.open("wb") if err else None
            try:
                process = subprocess.Popen(
                    command,
                    cwd=self.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr_file or subprocess.STDOUT,
                    start_new_session=True,  # its own process group: leftovers are stopped later
                )
            finally:
                if stderr_file:
                    stderr_file.close()
        self.groups.append(process)
        return process

    def _wait(self, block: Block, process: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        try:
            code = process.wait(BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            _stop_group(process)
            raise self._failure(
                block,
                f"did not finish within {BLOCK_TIMEOUT:.0f} s; a command that never exits needs "
                "<!-- background: why --> (shell) or <!-- not-run: why --> before the fence",
                out,
                err,
            ) from None
        if code != 0:
            hint = ""
            if "command not found" in err.read_text(errors="replace"):
                hint = " (a command it needs is missing: install it, and have .ci/run install it)"
            raise self._failure(block, f"exited with {code}{hint}", out, err)
        missing = missing_lines(expected_output(block), out.read_text(errors="replace"))
        if missing:
            raise self._failure(
                block, "did not print what its comments show:\n  " + "\n  ".join(missing), out, err
            )

    def _run_shell(self, block: Block) -> None:
        save = self._files(block, ".state")
        command, env = self._shell_command(block, save)
        out, err = self._files(block, ".out"), self._files(block, ".err")
        process = self._popen(command, env, out, err)
        self._wait(block, process, out, err)
        self.cwd = Path(Path(f"{save}.cwd").read_text().strip())
        pairs = Path(f"{save}.env").read_bytes().split(b"\0")
        self.env = dict(
            pair.decode(errors="surrogateescape").split("=", 1) for pair in pairs if b"=" in pair
        )
        for name in [k for k in self.env if k.startswith("__DOCS")]:
            del self.env[name]

    def _start_background(self, block: Block) -> None:
        command, env = self._shell_command(block, None)
        log = self._files(block, ".log")
        process = self._popen(command, env, log, None)
        background = Background(block, process, log)
        self.backgrounds.append(background)
        wanted = expected_output(block)
        deadline = time.monotonic() + (BACKGROUND_TIMEOUT if wanted else 1.0)
        while time.monotonic() < deadline:
            if wanted and not missing_lines(wanted, background.output()):
                return
            if process.poll() is not None:
                raise self._failure(
                    block, f"ended (exit {process.returncode}) instead of running on", log, None
                )
            time.sleep(0.1)
        if wanted:
            missing = missing_lines(wanted, background.output())
            raise self._failure(
                block,
                f"did not print what its comments show within {BACKGROUND_TIMEOUT:.0f} s:\n  "
                + "\n  ".join(missing),
                log,
                None,
            )

    def _run_python(self, block: Block) -> None:
        assert self.cwd is not None
        named = FILE_COMMENT.match(block.source.lstrip("\n"))
        if named:
            target = self.cwd / named["name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(substitute(block.source, self.port))
            return
        script = self._files(block, ".py")
        script.write_text(self._padded(block))
        out, err = self._files(block, ".out"), self._files(block, ".err")
        command = [sys.executable, str(HERE / "run_python_block.py"), str(script), str(block.doc)]
        process = self._popen(command, self.env, out, err)
        self._wait(block, process, out, err)

    # -- reporting and cleanup ---------------------------------------------------------------

    def _failure(self, block: Block, what: str, out: Path, err: Path | None) -> SnippetFailed:
        parts = [f"{block.where}: {block.kind} block {what}"]
        parts.append("--- the block, as run ---\n" + substitute(block.source, self.port).rstrip())
        for title, path in (("stdout", out), ("stderr", err)):
            if path is not None and path.exists():
                parts.append(f"--- {title} ---\n{_tail(path.read_text(errors='replace'))}")
        for background in self.backgrounds:
            if background.block is block:
                continue
            state = background.process.poll()
            status = "running" if state is None else f"exit {state}"
            parts.append(
                f"--- background {background.block.where} ({status}) ---\n"
                + _tail(background.output())
            )
        if self.server is not None:
            parts.append("--- server log ---\n" + _tail(self.server.log()))  # type: ignore[attr-defined]
        return SnippetFailed("\n".join(parts))

    def close(self) -> None:
        for group in reversed(self.groups):
            _stop_group(group)
        self.groups.clear()
        if self.server is not None:
            self.server.stop()  # type: ignore[attr-defined]


def _tail(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "…\n" + text[-limit:]


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a block's process group: the block and whatever it left running."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def _real(command: str) -> str:
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / command
        if folder and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return command


def describe(block: Block) -> str:
    """A short id for pytest."""
    return f"{display(block.doc)}:{block.line}-{block.kind}"
