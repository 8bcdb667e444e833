"""Delegated device authentication against a real little HTTP application."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tidings.auth.delegated import DelegatedAuthenticator
from tidings.errors import DelegateUnavailable, InvalidToken


class App:
    """Answers /auth like an application would; counts calls; can fail on demand."""

    def __init__(self) -> None:
        self.calls = 0
        self.mode = "ok"
        self.seen_headers: dict[str, str] = {}
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                app.calls += 1
                app.seen_headers = {k.lower(): v for k, v in self.headers.items()}
                if app.mode == "slow":
                    time.sleep(1.5)
                status, body = {
                    "ok": (200, {"user_id": "alice", "session_id": "tab-1", "claims": {"r": 1}}),
                    "refuse": (401, {}),
                    "error": (500, {}),
                    "nouser": (200, {"user_id": ""}),
                    "slow": (200, {"user_id": "alice"}),
                }[app.mode]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/auth"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def app() -> Iterator[App]:
    server = App()
    yield server
    server.server.shutdown()
    server.server.server_close()


COOKIE = {"cookie": "session=abc", "user-agent": "test", "x-tenant": "t1"}


async def test_admits_the_named_user_and_forwards_only_allowed_headers(app: App) -> None:
    """Cookie and allow-listed headers are forwarded; the app's user, session and claims come
    back."""
    auth = DelegatedAuthenticator(app.url, forward_headers=["X-Tenant"])
    principal, session = await auth.authenticate_request(COOKIE)
    assert (principal.user_id, session, principal.claims) == ("alice", "tab-1", {"r": 1})
    assert app.seen_headers["cookie"] == "session=abc" and app.seen_headers["x-tenant"] == "t1"
    assert app.seen_headers.get("user-agent", "").startswith("python-httpx")
    await auth.aclose()


async def test_answers_are_reused_for_the_same_credentials(app: App) -> None:
    """A reconnect storm with the same cookie costs the application one call."""
    auth = DelegatedAuthenticator(app.url, cache_ttl=10)
    for _ in range(20):
        await auth.authenticate_request(COOKIE)
    assert app.calls == 1
    await auth.aclose()


@pytest.mark.parametrize(
    ("mode", "error"),
    [("refuse", InvalidToken), ("nouser", InvalidToken), ("error", DelegateUnavailable)],
)
async def test_refusals_and_failures(app: App, mode: str, error: type[Exception]) -> None:
    """401 or no user refuses the device; a 500 means unavailable."""
    app.mode = mode
    auth = DelegatedAuthenticator(app.url)
    with pytest.raises(error):
        await auth.authenticate_request(COOKIE)
    await auth.aclose()


async def test_timeout_and_circuit_breaker(app: App) -> None:
    """A slow app times out; after repeated failures the circuit opens and calls stop."""
    app.mode = "slow"
    auth = DelegatedAuthenticator(
        app.url, timeout=0.3, failures_to_open=2, open_for=30, cache_ttl=0
    )
    started = time.monotonic()
    for _ in range(2):
        with pytest.raises(DelegateUnavailable):
            await auth.authenticate_request(COOKIE)
    assert time.monotonic() - started < 2
    calls = app.calls
    for _ in range(10):
        with pytest.raises(DelegateUnavailable, match="failing"):
            await auth.authenticate_request(COOKIE)
    assert app.calls == calls  # the application is spared while the circuit is open
    await auth.aclose()


async def test_no_credentials_is_refused_without_a_call(app: App) -> None:
    """A request with no cookie or authorization never reaches the application."""
    auth = DelegatedAuthenticator(app.url)
    with pytest.raises(InvalidToken):
        await auth.authenticate_request({"user-agent": "x"})
    assert app.calls == 0
    await auth.aclose()
