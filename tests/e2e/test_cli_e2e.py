"""The tidings command against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import httpx

from conftest import ServerProcess
from tidings.auth.jwt import JwtAuthenticator


def test_clients_create_list_delete(server: ServerProcess) -> None:
    """clients create prints a secret once; list never shows it; delete revokes."""
    created = json.loads(
        server.cli("clients", "create", "shop", "--scope", "notify,publish").stdout
    )
    assert created["client_id"].startswith("tc_") and len(created["client_secret"]) >= 40
    assert created["scopes"] == ["notify", "publish"]
    listed = json.loads(server.cli("clients", "list").stdout)
    mine = [c for c in listed if c["client_id"] == created["client_id"]]
    assert mine and "client_secret" not in mine[0] and "secret_hash" not in mine[0]
    server.cli("clients", "delete", created["client_id"])
    response = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(created["client_id"], created["client_secret"]),
    )
    assert response.status_code == 401


def test_clients_create_refuses_unknown_scope(server: ServerProcess) -> None:
    """An unknown scope is a usage error that lists the known ones."""
    result = server.cli("clients", "create", "x", "--scope", "everything", check=False)
    assert result.returncode == 2 and "notify" in result.stderr


def test_token_is_accepted_by_the_server(server: ServerProcess) -> None:
    """tidings token prints a JWT for the user signed with the configured secret."""
    token = server.cli("token", "alice", "--ttl", "60").stdout.strip()
    import asyncio

    from conftest import JWT_SECRET

    principal = asyncio.run(JwtAuthenticator(JWT_SECRET).authenticate(token))
    assert principal.user_id == "alice"


def test_notify_and_listen(server: ServerProcess) -> None:
    """listen prints welcome and counts; notify (with --env credentials) moves them."""
    alice = f"cli-{uuid.uuid4().hex[:8]}"
    exports = server.cli("clients", "create", "cli", "--scope", "notify", "--env").stdout
    env_pairs = dict(
        line.removeprefix("export ").split("=", 1) for line in exports.strip().splitlines()
    )
    listener = subprocess.Popen(
        [sys.executable, "-m", "tidings", "listen", alice, "--url", server.url, "--mark-seen"],
        env=server.environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        welcome = json.loads(listener.stdout.readline())
        assert welcome["type"] == "welcome" and welcome["user_id"] == alice
        assert json.loads(listener.stdout.readline())["count"] == 0
        env = {**server.environment(), **env_pairs}
        sent = subprocess.run(
            [sys.executable, "-m", "tidings", "notify", alice, "plain words", "--url", server.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        notification = json.loads(sent.stdout)
        assert notification["data"] == {"text": "plain words"}
        frames = [json.loads(listener.stdout.readline()) for _ in range(3)]
        assert frames[0] == {
            "type": "newNotificationCountChanged",
            "count": 1,
            "version": 1,
            "unread": 1,
        }
        assert frames[1]["type"] == "newNotificationData"
        assert frames[1]["notifications"][0]["notification_id"] == notification["notification_id"]
        assert frames[2] == {
            "type": "newNotificationCountChanged",
            "count": 0,
            "version": 2,
            "unread": 1,
        }
    finally:
        listener.terminate()
        listener.wait(10)
        for stream in (listener.stdout, listener.stderr):
            if stream:
                stream.close()


def test_notify_without_credentials_is_a_usage_error(server: ServerProcess) -> None:
    """notify needs client credentials and says so."""
    result = server.cli("notify", "alice", "{}", "--url", server.url, check=False)
    assert result.returncode == 2 and "client-id" in result.stderr


def test_serve_refuses_a_bad_store_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """serve with an unknown store scheme fails fast with a clear message."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--store", "mongo://x", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "unknown store URL" in result.stderr + result.stdout
    assert time.monotonic() - started < 30
