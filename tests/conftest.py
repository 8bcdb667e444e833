"""Shared fixtures: real server processes, device tokens, service credentials.

Servers are real ``tidings serve`` processes on free loopback ports with their own SQLite file;
tests talk to them with real WebSocket and HTTP clients.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tidings.auth.jwt import JwtAuthenticator

JWT_SECRET = "test-secret-" + "x" * 40


def free_port() -> int:
    """A free port below the ephemeral range, so that no outgoing connection of another test
    can take it between now and the moment a server binds it."""
    import random

    low = 20000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            high = min(int(ports.read().split()[0]), 32768) - 1
    except (OSError, ValueError):
        high = 32767
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A ``tidings serve`` child process."""

    db_path: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def node_id(self) -> str:
        return str(self.env.get("TIDINGS_NODE_ID", f"node-{self.port}"))

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            TIDINGS_STORE=self.store_url,
            TIDINGS_PORT=str(self.port),
            TIDINGS_HOST="127.0.0.1",
            TIDINGS_JWT_SECRET=JWT_SECRET,
            TIDINGS_NODE_ID=self.node_id,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.env)
        return env

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.log_path = self.db_path.with_suffix(f".{self.port}.log")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tidings", "serve", "--log-level", "warning"],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                health = httpx.get(f"{self.url}/health", timeout=0.5)
                # Our own node answered (not something else on the port).
                if health.status_code == 200 and health.json().get("node") == self.node_id:
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = self.environment()
        return subprocess.run(
            [sys.executable, "-m", "tidings", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def create_client(self, *scopes: str) -> tuple[str, str]:
        import json

        args = ["clients", "create", "test"]
        for scope in scopes:
            args += ["--scope", scope]
        created = json.loads(self.cli(*args).stdout)
        return created["client_id"], created["client_secret"]

    def service_token(self, *scopes: str) -> str:
        client_id, secret = self.create_client(*scopes)
        response = httpx.post(
            f"{self.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id, secret),
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


def device_token(user_id: str, **extra: object) -> str:
    """A device JWT the test servers accept."""
    return JwtAuthenticator(JWT_SECRET).issue(user_id, **extra)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


def _print_logs_if_failed(request: pytest.FixtureRequest, servers: list[ServerProcess]) -> None:
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for proc in servers:
            code = proc.process.poll() if proc.process else None
            print(f"\n--- log of server on port {proc.port} (exit code {code}) ---")
            print(proc.log()[-4000:])


@pytest.fixture
def start_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ServerProcess]]:
    """``start_server(db_path=None, port=None, **env)``: a server killed at the test's end."""
    started: list[ServerProcess] = []

    def start(db_path: Path | None = None, port: int | None = None, **env: str) -> ServerProcess:
        proc = ServerProcess(db_path or tmp_path / "tidings.db", env=env)
        if port is not None:
            proc.port = port
        started.append(proc)
        return proc.start()

    yield start
    _print_logs_if_failed(request, started)
    for proc in started:
        proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module (SQLite file, memory bus)."""
    proc = ServerProcess(tmp_path_factory.mktemp("server") / "tidings.db").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def notify_token(server: ServerProcess) -> str:
    """A service token with scope ``notify`` for the module's server."""
    return server.service_token("notify")


# Real services. URLs come from the environment; tests that need a service skip on a laptop
# without it and fail in CI (CI=true), where .ci/run has started them.

POSTGRES_URL = os.environ.get(
    "TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("TIDINGS_TEST_NATS_URL", "nats://127.0.0.1:4222")


def require_service(name: str, url: str) -> None:
    """Skip (or, in CI, fail) unless ``url``'s host and port accept a TCP connection."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
            return
    except OSError as exc:
        message = f"{name} is not reachable at {url}: {exc}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def create_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    import asyncio
    import uuid

    import asyncpg

    require_service("PostgreSQL", POSTGRES_URL)
    name = f"tidings_t_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base, _, _ = POSTGRES_URL.rpartition("/")
    return f"{base}/{name}"


def drop_database(url: str) -> None:
    import asyncio

    import asyncpg

    name = url.rpartition("/")[2]

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test."""
    url = create_database()
    yield url
    drop_database(url)


@dataclass
class BrokerProcess:
    """A private Redis or NATS server on a free port that a test may kill and restart."""

    kind: str
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "redis" if self.kind == "redis" else "nats"
        return f"{scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "redis":
            return [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ]
        nats = "nats-server"
        if not any((Path(d) / nats).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
            nats = "/usr/sbin/nats-server"
        return [nats, "-a", "127.0.0.1", "-p", str(self.port)]

    def start(self) -> BrokerProcess:
        try:
            self.process = subprocess.Popen(
                self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except FileNotFoundError as exc:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"{self.kind} server binary missing: {exc}")
            pytest.skip(f"{self.kind} server binary missing: {exc}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not start on {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def restart(self, down_for: float = 0.5) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Callable[[str], BrokerProcess]]:
    """``private_broker("redis" | "nats")``: a dedicated broker process for fault tests."""
    started: list[BrokerProcess] = []

    def start(kind: str) -> BrokerProcess:
        broker = BrokerProcess(kind, tmp_path).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.kill()


SUPPORT = Path(__file__).parent / "support"


@pytest.fixture(scope="module")
def oauth_issuer() -> Iterator[str]:
    """A third-party OAuth2 issuer (npm oauth2-mock-server); yields its base URL."""
    import json
    import shutil

    node = shutil.which("node")
    if node is None or not (SUPPORT / "node_modules" / "oauth2-mock-server").exists():
        message = "node or tests/support/node_modules missing (run make test)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    proc = subprocess.Popen(
        [node, str(SUPPORT / "oauth_issuer.mjs"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        issuer = json.loads(line)["issuer"]
    except (ValueError, KeyError):
        proc.kill()
        raise RuntimeError(f"oauth2-mock-server did not start: {line}") from None
    yield str(issuer)
    proc.kill()
    proc.wait(5)
    proc.stdout.close()
