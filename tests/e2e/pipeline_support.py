"""Helpers of the pipeline end-to-end tests: a scriptable SMTP server, HTTP receivers for
webhooks and web push, worker processes, and polling a message until its deliveries settle.

Everything here is real: the SMTP server is aiosmtpd on a loopback port, the receivers are
``http.server`` threads, workers are ``python -m tidings worker`` child processes.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from conftest import ServerProcess, free_port

END_STATES = frozenset({"sent", "failed", "deleted"})
WAIT = 15.0  # seconds to wait for a state the pipeline should reach soon

Json = dict[str, Any]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --------------------------------------------------------------------------------------------
# SMTP
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """Hold DATA without answering until the client goes away (or the sink closes)."""


@dataclass(frozen=True)
class Slow:
    """Hold DATA for ``seconds``, then answer ``response``."""

    seconds: float
    response: str = "250 2.0.0 OK"


Step = str | Block | Slow


@dataclass
class DataRecord:
    """One DATA command the sink received: which delivery, when it was open, how it ended."""

    rcpt: str
    delivery_id: str | None
    message: EmailMessage
    started: float
    ended: float | None = None
    outcome: str | None = None  # the answer given, or "cancelled" when the client vanished

    @property
    def accepted(self) -> bool:
        return self.outcome is not None and self.outcome.startswith("250")


class _SmtpHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        rcpt = str(envelope.rcpt_tos[0]).lower() if envelope.rcpt_tos else ""
        record = DataRecord(
            rcpt=rcpt,
            delivery_id=message.get("X-Tidings-Delivery"),
            message=message,
            started=time.monotonic(),
        )
        step = self.sink._take_step(rcpt, record)
        try:
            if isinstance(step, Block):
                while not self.sink._released.is_set():
                    await asyncio.sleep(0.02)
                response = "421 4.3.0 sink closing"
            elif isinstance(step, Slow):
                await asyncio.sleep(step.seconds)
                response = step.response
            else:
                response = step
        except asyncio.CancelledError:
            record.outcome, record.ended = "cancelled", time.monotonic()
            raise
        record.outcome, record.ended = response, time.monotonic()
        return response


class SmtpSink:
    """An SMTP server on a loopback port whose answers to DATA are scripted per recipient.

    ``script(address, "451 …", Block(), …)`` sets the answers to the next DATA commands for that
    recipient, in order; once they are used up (or without a script) DATA is answered ``250``.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Step]] = {}
        self._records: list[DataRecord] = []
        self._released = threading.Event()
        self.controller = Controller(_SmtpHandler(self), hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def close(self) -> None:
        self._released.set()
        self.controller.stop()

    def script(self, address: str, *steps: Step) -> None:
        with self._lock:
            self._scripts[address.lower()] = list(steps)

    def _take_step(self, rcpt: str, record: DataRecord) -> Step:
        with self._lock:
            self._records.append(record)
            steps = self._scripts.get(rcpt)
            return steps.pop(0) if steps else "250 2.0.0 OK"

    def records(
        self, *, address: str | None = None, delivery_id: str | None = None
    ) -> list[DataRecord]:
        with self._lock:
            found = list(self._records)
        if address is not None:
            found = [r for r in found if r.rcpt == address.lower()]
        if delivery_id is not None:
            found = [r for r in found if r.delivery_id == delivery_id]
        return found

    def accepted(
        self, *, address: str | None = None, delivery_id: str | None = None
    ) -> list[DataRecord]:
        return [r for r in self.records(address=address, delivery_id=delivery_id) if r.accepted]

    def wait_records(
        self,
        predicate: Callable[[list[DataRecord]], bool],
        *,
        address: str | None = None,
        timeout: float = WAIT,
    ) -> list[DataRecord]:
        """Poll until ``predicate(records)`` holds for the (address's) records."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.records(address=address)
            if predicate(found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"SMTP sink: condition not met within {timeout}s: {found}")
            time.sleep(0.02)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """A local SMTP server (aiosmtpd) for the test: import it into a test module to use it."""
    smtp = SmtpSink().start()
    yield smtp
    smtp.close()


def assert_never_concurrent(records: Iterable[DataRecord]) -> None:
    """No two DATA commands of one delivery were ever open at the same time."""
    by_delivery: dict[str | None, list[DataRecord]] = {}
    for record in records:
        by_delivery.setdefault(record.delivery_id, []).append(record)
    for delivery_id, items in by_delivery.items():
        items.sort(key=lambda r: r.started)
        for before, after in itertools.pairwise(items):
            assert before.ended is not None and before.ended <= after.started, (
                f"delivery {delivery_id} was sent twice at once: "
                f"[{before.started:.3f}, {before.ended}] overlaps [{after.started:.3f}, …]"
            )


def text_part(message: EmailMessage, subtype: str) -> str | None:
    """The decoded ``text/<subtype>`` part of an email, if there is one."""
    for part in message.walk():
        if part.get_content_type() == f"text/{subtype}":
            content = part.get_content()
            assert isinstance(content, str)
            return content
    return None


# --------------------------------------------------------------------------------------------
# HTTP receivers (webhook endpoints, push services)
# --------------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


Answer = int | tuple[int, dict[str, str]]  # a status, or a status with response headers


class HttpReceiver:
    """An HTTP server on a loopback port recording every POST; answers are scripted per path
    (``script(path, (503, {"Retry-After": "1"}), 200)``), ``default_status`` once a path's
    script is used up."""

    def __init__(self, default_status: int = 200) -> None:
        self.default_status = default_status
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Answer]] = {}
        self._received: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = receiver._take(Received(self.path, headers, body))
                status, extra = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def script(self, path: str, *statuses: Answer) -> None:
        with self._lock:
            self._scripts[path] = list(statuses)

    def _take(self, request: Received) -> Answer:
        with self._lock:
            self._received.append(request)
            statuses = self._scripts.get(request.path)
            return statuses.pop(0) if statuses else self.default_status

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            found = list(self._received)
        return [r for r in found if path is None or r.path == path]


# --------------------------------------------------------------------------------------------
# The service API
# --------------------------------------------------------------------------------------------


def api_client(server: ServerProcess, token: str | None = None) -> httpx.Client:
    """An HTTP client for ``server``, with ``token`` as its bearer token."""
    return httpx.Client(
        base_url=server.url,
        headers=bearer(token) if token else None,
        timeout=10,
        trust_env=False,
    )


def post_message(http: httpx.Client, body: Json, expect: int | None = 202, **kw: Any) -> Json:
    """POST /messages; asserts the status (``expect``) and returns the answer's JSON."""
    response = http.post("/messages", json=body, **kw)
    if expect is not None:
        assert response.status_code == expect, (response.status_code, response.text)
    answer = response.json()
    assert isinstance(answer, dict), answer
    return answer


def get_message(http: httpx.Client, message_id: str) -> Json:
    response = http.get(f"/messages/{message_id}")
    assert response.status_code == 200, (response.status_code, response.text)
    message = response.json()
    assert isinstance(message, dict)
    return message


def settled(message: Json) -> bool:
    deliveries = message.get("deliveries") or []
    return bool(deliveries) and all(d["state"] in END_STATES for d in deliveries)


def wait_message(
    http: httpx.Client,
    message_id: str,
    until: Callable[[Json], bool] = settled,
    timeout: float = WAIT,
) -> Json:
    """Poll GET /messages/{id} until ``until(message)`` (default: every delivery ended)."""
    deadline = time.monotonic() + timeout
    while True:
        message = get_message(http, message_id)
        if until(message):
            return message
        if time.monotonic() > deadline:
            raise AssertionError(
                f"message {message_id} did not reach the condition within {timeout}s:\n"
                + json.dumps(message, indent=1)
            )
        time.sleep(0.05)


def delivery(message: Json, user_id: str, channel: str) -> Json:
    """The delivery of ``message`` for this user and channel (exactly one)."""
    found = [
        d for d in message["deliveries"] if d["user_id"] == user_id and d["channel"] == channel
    ]
    assert len(found) == 1, (user_id, channel, message["deliveries"])
    return found[0]


def history(d: Json) -> list[tuple[str, str]]:
    """A delivery's history as (state, reason) pairs, oldest first."""
    return [(h["state"], h["reason"]) for h in d["history"]]


def contains(container: Any, value: Any) -> bool:
    """Whether ``value`` is ``container`` or nested anywhere in it (dicts and lists)."""
    if container == value:
        return True
    if isinstance(container, dict):
        return any(contains(v, value) for v in container.values())
    if isinstance(container, list):
        return any(contains(v, value) for v in container)
    return False


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A ``python -m tidings worker`` child process with the API node's settings."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tidings", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when a machine dies."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then wait; returns the exit code (None if it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                return None
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_env(api: ServerProcess, name: str, **overrides: str) -> dict[str, str]:
    """The environment of a worker process sharing ``api``'s store and settings."""
    env = api.environment()
    env.pop("TIDINGS_PORT", None)
    env.update(TIDINGS_NODE_ID=name, TIDINGS_WORKERS="1")
    env.update(overrides)
    return env
