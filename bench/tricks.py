"""The two speed-ups tidings keeps that a reader must decode, each against the plain code it
replaces, so that docs/benchmarks.md can say whether it still pays.

    python bench/tricks.py

1. ``fanout/eager.py`` ``send_eagerly``: a fan-out through an ASGI server other than tidings'
   own starts each socket's ``send`` coroutine in place instead of in a task of its own.
   Measured as sends per second to 1,000 sockets whose ``send`` completes without waiting
   (a socket with room in its buffer, the usual case), eager vs one task per send.
2. ``core/models.py`` ``nests_deeper``: the chain of lists it writes a value under is built
   once per thread instead of per call. Measured per call on a value that passes the cheap
   checks (over 4 KiB with more brackets than the limit), cached vs built each time.
3. ``delivery/channels/email.py`` builds emails with the standard library's ``compat32`` MIME
   classes, not ``EmailMessage``: per email of a text and an HTML part, both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from common import report

from tidings.core import models
from tidings.fanout.eager import send_eagerly


class Socket:
    """An ASGI server's socket whose buffer has room: ``send`` completes without waiting."""

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, message: dict[str, Any]) -> None:
        self.sent += 1


async def fan_out_eager(sockets: list[Socket], frames: int) -> None:
    for _ in range(frames):
        message = {"type": "websocket.send", "text": "x"}
        for socket in sockets:
            rest = send_eagerly(socket.send(message))
            if rest is not None:
                await rest


async def fan_out_tasks(sockets: list[Socket], frames: int) -> None:
    for _ in range(frames):
        message = {"type": "websocket.send", "text": "x"}
        tasks = [asyncio.ensure_future(socket.send(message)) for socket in sockets]
        await asyncio.gather(*tasks)


def sends_per_second(fan_out: Any, sockets: int, frames: int) -> float:
    targets = [Socket() for _ in range(sockets)]
    started = time.perf_counter()
    asyncio.run(fan_out(targets, frames))
    elapsed = time.perf_counter() - started
    assert sum(t.sent for t in targets) == sockets * frames
    return sockets * frames / elapsed


def nests_per_call(value: Any, encoded: bytes, cached: bool, calls: int) -> float:
    """Microseconds per ``nests_deeper`` call."""
    started = time.perf_counter()
    for _ in range(calls):
        if not cached:
            models._chains.__dict__.pop("built", None)
        assert not models.nests_deeper(value, encoded)
    return (time.perf_counter() - started) / calls * 1e6


def email_compat32(text: str, html: str) -> bytes:
    message = MIMEMultipart("alternative")
    message.attach(MIMEText(text, "plain", "utf-8"))
    message.attach(MIMEText(html, "html", "utf-8"))
    message["From"], message["To"], message["Subject"] = FROM, TO, SUBJECT
    return message.as_bytes()


def email_message(text: str, html: str) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = FROM, TO, SUBJECT
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return bytes(message)


FROM, TO, SUBJECT = "alerts@example.org", "ann@example.org", "Your order 42 has shipped"


def ms_per_email(build: Any, calls: int) -> float:
    text = "Hello Ann,\n\nyour order 42 has shipped.\n" * 5
    html = "<p>Hello Ann,</p><p>your order <b>42</b> has shipped.</p>" * 5
    started = time.perf_counter()
    for _ in range(calls):
        build(text, html)
    return (time.perf_counter() - started) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()

    value = [{"id": i, "tags": [i, [i]]} for i in range(300)]
    encoded = orjson.dumps(value)
    assert len(encoded) > 4096
    figures: dict[str, list[float]] = {
        "eager sends/s": [],
        "task per send, sends/s": [],
        "nests_deeper cached µs": [],
        "nests_deeper built per call µs": [],
        "email compat32 ms": [],
        "email EmailMessage ms": [],
    }
    for _ in range(args.rounds):  # interleaved: the machine's drift falls on both alike
        figures["eager sends/s"].append(sends_per_second(fan_out_eager, args.sockets, args.frames))
        figures["task per send, sends/s"].append(
            sends_per_second(fan_out_tasks, args.sockets, args.frames)
        )
        figures["nests_deeper cached µs"].append(nests_per_call(value, encoded, True, args.calls))
        figures["nests_deeper built per call µs"].append(
            nests_per_call(value, encoded, False, args.calls)
        )
        figures["email compat32 ms"].append(ms_per_email(email_compat32, 500))
        figures["email EmailMessage ms"].append(ms_per_email(email_message, 500))
    report(
        "tricks",
        {
            name: f"median {statistics.median(runs):,.2f} "
            f"(min {min(runs):,.2f}, max {max(runs):,.2f})"
            for name, runs in figures.items()
        },
    )


if __name__ == "__main__":
    main()
