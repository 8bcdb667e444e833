"""Run one Python block of the docs as ``python -m asyncio`` runs what is typed into it.

``python run_python_block.py BLOCK DOC``: BLOCK holds the block's source on the lines it has in
DOC (blank lines before it), so a traceback names DOC and its line. A block with top-level
``await`` is first fed line by line to the compiler the way ``python -m asyncio``'s prompt feeds
it (a blank line ends a compound statement there), so a block that only works as a file fails;
then it runs as a whole. A block without top-level ``await`` runs as a plain script would.
"""

from __future__ import annotations

import ast
import asyncio
import codeop
import inspect
import sys
from pathlib import Path


def check_as_typed(lines: list[str], doc: str) -> None:
    """Stop with the line that ``python -m asyncio``'s prompt would refuse."""
    compiler = codeop.CommandCompiler()
    compiler.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    buffer: list[str] = []
    for number, line in enumerate([*lines, ""], 1):
        buffer.append(line)
        try:
            code = compiler("\n".join(buffer), "<console>", "single")
        except (SyntaxError, ValueError, OverflowError) as exc:
            message = getattr(exc, "msg", str(exc))
            sys.exit(
                f"{doc}:{number}: typed into `python -m asyncio`, this block fails here "
                f"({message}): at the prompt a blank line ends an indented block, and a "
                "statement after an indented block needs a blank line before it"
            )
        if code is not None:
            buffer = []


def main() -> None:
    block, doc = Path(sys.argv[1]), sys.argv[2]
    source = block.read_text(encoding="utf-8")
    code = compile(source, doc, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    if code.co_flags & inspect.CO_COROUTINE:
        check_as_typed(source.splitlines(), doc)
        asyncio.run(eval(code, namespace))
    else:
        exec(code, namespace)


if __name__ == "__main__":
    main()
