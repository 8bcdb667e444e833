"""The spec of Autobahn|Testsuite's fuzzing client (``wstest -m fuzzingclient -s spec.json``)
for tidings' transport, and what the result of a case must be.

Run ``python tests/conformance/fuzzingclient_spec.py ws://127.0.0.1:9001/ reports`` to print
the spec for a server started by hand (tests/conformance/echo_server.py).
"""

from __future__ import annotations

import json
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

#: the agent name under which the report files the server's results
AGENT = "tidings"

#: case groups not run, and why (the only ones: every other case must pass)
EXCLUDED: dict[str, str] = {
    "12.*": "permessage-deflate: tidings negotiates no extension on purpose (a compression "
    "context costs 30-40 KiB per connection; src/tidings/gateway/transport.py)",
    "13.*": "permessage-deflate with its parameters (window bits, context takeover): no "
    "extension is negotiated, for the same reason as 12.*",
}

#: what a case's ``behavior`` and ``behaviorClose`` may be. NON-STRICT is what websockets and
#: uvicorn accept too: here the cases that send a valid message and, right behind it, a protocol
#: error (3.2-3.4, 4.1.3-4.1.5, 4.2.3-4.2.5, 5.15) may see the connection failed (1002) before
#: the valid message is echoed: the transport fails the connection as soon as it parses the
#: error, before the application's task has run to send the echo (which of these cases end
#: NON-STRICT varies with the machine's load). INFORMATIONAL cases report without judging
#: (7.1.6: a message sent just before a close is not echoed; 7.13.x: close codes 5000 and 65536).
ACCEPTED = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})

#: cases where NON-STRICT is not good enough (only OK or INFORMATIONAL passes), and why
STRICT: dict[str, str] = {
    "6.4.*": "invalid UTF-8 must fail the connection as soon as the bytes that make it invalid "
    "arrive (RFC 6455 section 8.1), not once the message is complete: the transport decodes "
    "a text message as it arrives for that",
}


def accepted(case: str, behavior: object) -> bool:
    """Whether ``behavior`` (or ``behaviorClose``) passes for ``case``."""
    if behavior == "NON-STRICT" and any(fnmatch(case, pattern) for pattern in STRICT):
        return False
    return behavior in ACCEPTED


def spec(url: str, outdir: str | Path, cases: list[str] | None = None) -> dict[str, Any]:
    """The fuzzing client's spec: every case (or ``cases``) against ``url`` but the excluded
    groups, reports in ``outdir``.

    ``failByDrop`` stays on (the default): a server that drops the TCP connection without a
    closing handshake where one is due fails the case."""
    return {
        "outdir": str(outdir),
        "servers": [{"agent": AGENT, "url": url, "options": {"version": 18}}],
        "cases": cases or ["*"],
        "exclude-cases": sorted(EXCLUDED),
        "exclude-agent-cases": {},
    }


def write_spec(path: Path, url: str, outdir: str | Path, cases: list[str] | None = None) -> Path:
    path.write_text(json.dumps(spec(url, outdir, cases), indent=2) + "\n")
    return path


def failures(index: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The cases of the report's ``index.json`` whose behaviour is not accepted, in case
    order: ``(case id, its entry)``."""
    results = index.get(AGENT, {})
    failed = [
        (case, result)
        for case, result in results.items()
        if not accepted(case, result.get("behavior"))
        or not accepted(case, result.get("behaviorClose"))
    ]
    return sorted(failed, key=lambda item: case_key(item[0]))


def case_key(case: str) -> tuple[int, ...]:
    """``"9.10.2"`` sorts after ``"9.2.1"``."""
    return tuple(int(part) for part in case.split(".") if part.isdigit())


if __name__ == "__main__":
    url, outdir = sys.argv[1], sys.argv[2]
    print(json.dumps(spec(url, outdir, sys.argv[3:] or None), indent=2))
