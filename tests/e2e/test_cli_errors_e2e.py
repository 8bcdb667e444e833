"""The first hour of a new user: every mistake of the walk-through gets one line that names the
setting or the fix, never a traceback, and nothing is sent or written by a command that failed.

Each test runs the real ``tidings`` command (and, where one is needed, a real server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conftest import POSTGRES_URL, ServerProcess, device_token, free_port, require_service


def tidings(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command in ``cwd`` with no ``TIDINGS_*`` variable but those of ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``Error:`` line of a failed command; click's usage lines may precede it."""
    assert result.returncode in (1, 2), (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith(("Usage: ", "Try '"))
    ]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def credentials(server: ServerProcess) -> dict[str, str]:
    """TIDINGS_URL, TIDINGS_CLIENT_ID and TIDINGS_CLIENT_SECRET of a notify client."""
    client_id, secret = server.create_client("notify")
    return {
        "TIDINGS_URL": server.url,
        "TIDINGS_CLIENT_ID": client_id,
        "TIDINGS_CLIENT_SECRET": secret,
    }


def unseen(server: ServerProcess, user_id: str) -> int:
    with connect(server.ws_url, additional_headers=_bearer(user_id)) as sock:
        json.loads(sock.recv(5))  # welcome
        return int(json.loads(sock.recv(5))["count"])


def _bearer(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {device_token(user_id)}"}


# notify: what it is given


@pytest.mark.parametrize(
    "data", ['{"text": Your order shipped}', "[1, 2", '  {"text": "unclosed"'], ids=str
)
def test_notify_refuses_malformed_json(
    server: ServerProcess, credentials: dict[str, str], tmp_path: Path, data: str
) -> None:
    """DATA that starts like JSON must be JSON: nothing is sent, the error says how to quote."""
    user = f"u-{uuid.uuid4().hex[:8]}"
    line = error_line(tidings("notify", user, data, cwd=tmp_path, env=credentials))
    assert "DATA" in line and "JSON" in line
    assert unseen(server, user) == 0


def test_notify_refuses_an_empty_user_id(credentials: dict[str, str], tmp_path: Path) -> None:
    """An empty USER_ID is refused by the command, not echoed back as the API's error list."""
    line = error_line(tidings("notify", "", "hi", cwd=tmp_path, env=credentials))
    assert "USER_ID" in line and "[{" not in line and "string_too_short" not in line


def test_notify_refuses_swapped_arguments(
    server: ServerProcess, credentials: dict[str, str], tmp_path: Path
) -> None:
    """JSON given as USER_ID is the arguments swapped: the error shows the order."""
    result = tidings("notify", '{"text": "hi"}', "alice", cwd=tmp_path, env=credentials)
    assert "USER_ID DATA" in error_line(result)


def test_notify_to_a_closed_port_is_one_line(credentials: dict[str, str], tmp_path: Path) -> None:
    """No server at --url: one line naming the URL and how to point the command elsewhere."""
    url = f"http://127.0.0.1:{free_port()}"
    result = tidings("notify", "alice", "hi", "--url", url, cwd=tmp_path, env=credentials)
    line = error_line(result)
    assert url in line and "TIDINGS_URL" in line


def test_notify_without_client_id_says_how_to_get_one(tmp_path: Path) -> None:
    """A missing --client-id points at `tidings clients create`."""
    line = error_line(tidings("notify", "alice", "hi", cwd=tmp_path))
    assert "--client-id" in line and "tidings clients create" in line


# --help


@pytest.mark.parametrize(
    ("command", "variables"),
    [
        (
            ["serve"],
            ["TIDINGS_HOST", "TIDINGS_PORT", "TIDINGS_STORE", "TIDINGS_BUS", "TIDINGS_NODE_ID"],
        ),
        (["notify"], ["TIDINGS_URL", "TIDINGS_CLIENT_ID", "TIDINGS_CLIENT_SECRET"]),
        (["listen"], ["TIDINGS_URL", "TIDINGS_TOKEN", "TIDINGS_STORE"]),
        (["clients", "create"], ["TIDINGS_STORE"]),
        (["token"], ["TIDINGS_STORE"]),
        (["worker"], ["TIDINGS_STORE", "TIDINGS_BUS", "TIDINGS_WORKERS"]),
    ],
    ids=["serve", "notify", "listen", "clients-create", "token", "worker"],
)
def test_help_shows_each_options_environment_variable(
    tmp_path: Path, command: list[str], variables: list[str]
) -> None:
    """Each option read from the environment shows its variable on its own help entry."""
    text = tidings(*command, "--help", cwd=tmp_path).stdout
    entries = _help_entries(text)
    for variable in variables:
        option = "--" + variable.removeprefix("TIDINGS_").lower().replace("_", "-")
        assert variable in entries.get(option, ""), (option, text)


def _help_entries(text: str) -> dict[str, str]:
    """Option name -> its whole help entry (click wraps long ones over several lines)."""
    entries: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            current = stripped.split()[0].split("/")[0]
            entries[current] = stripped
        elif current and line.startswith(" " * 6):
            entries[current] += " " + stripped
        else:
            current = ""
    return entries


# serve: configuration checked before the server starts


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TIDINGS_PORT", "eighty"),
        ("TIDINGS_JWT_SECRET", "too-short"),
        ("TIDINGS_ALLOWED_ORIGINS", '{"origin": "https://app.example"}'),
        ("TIDINGS_SERVICE_ALGORITHMS", '["RS256", '),
        ("TIDINGS_TOPIC_TTLS", "chat:*=60"),
        ("TIDINGS_LOG_FORMAT", "xml"),
        ("TIDINGS_RATE_LIMITS", '{"email": "lots"}'),
    ],
)
def test_serve_names_a_bad_setting_and_an_example(
    tmp_path: Path, variable: str, value: str
) -> None:
    """A bad setting stops serve before it starts, in one line naming it with an example."""
    env = {
        "TIDINGS_STORE": f"sqlite:///{tmp_path}/t.db",
        "TIDINGS_PORT": str(free_port()),
        variable: value,
    }
    result = tidings("serve", cwd=tmp_path, env=env)
    line = error_line(result)
    assert "Started server process" not in result.stderr
    assert variable in line and f"e.g. {variable}=" in line, line
    assert "validation error" not in line and "EnvSettingsSource" not in line
    if "SECRET" in variable:
        assert value not in line  # a secret, even a bad one, is never printed


def test_list_settings_take_comma_separated_values(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Comma-separated lists work like JSON ones, in the server that reads them."""
    node = start_server(
        TIDINGS_ALLOWED_ORIGINS="https://a.example, https://b.example",
        TIDINGS_SERVICE_ALGORITHMS="RS256",
        TIDINGS_JWT_ALGORITHMS="ES256,RS256",
        TIDINGS_DELEGATE_HEADERS="X-Tenant",
        TIDINGS_TOPIC_PATTERNS="news:*,pets",
    )
    headers = _bearer("alice")
    with connect(node.ws_url, additional_headers=headers, origin="https://b.example") as sock:
        assert json.loads(sock.recv(5))["type"] == "welcome"
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(node.ws_url, additional_headers=headers, origin="https://c.example"),
    ):
        pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_with_postgresql_down_is_one_line(tmp_path: Path, command: str) -> None:
    """A store that cannot be reached: one line naming TIDINGS_STORE, no traceback."""
    store = f"postgresql://postgres:hunter2-pw@127.0.0.1:{free_port()}/tidings"
    env = {"TIDINGS_PORT": str(free_port())}
    line = error_line(tidings(command, "--store", store, cwd=tmp_path, env=env))
    assert "TIDINGS_STORE" in line and "127.0.0.1" in line and "hunter2" not in line


def test_serve_on_a_port_in_use_is_one_line(server: ServerProcess, tmp_path: Path) -> None:
    """A port another process holds is refused before the node starts, naming TIDINGS_PORT."""
    result = tidings("serve", "--port", str(server.port), cwd=tmp_path)
    assert "TIDINGS_PORT" in error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_serve_with_a_missing_database_is_one_line(tmp_path: Path) -> None:
    """A PostgreSQL server without the database: one line that names it."""
    require_service("PostgreSQL", POSTGRES_URL)
    name = f"tidings_missing_{uuid.uuid4().hex[:8]}"
    store = f"{POSTGRES_URL.rpartition('/')[0]}/{name}"
    result = tidings("serve", "--port", str(free_port()), "--store", store, cwd=tmp_path)
    line = error_line(result)
    assert name in line and "TIDINGS_STORE" in line


# listen and token from another folder


@pytest.fixture
def generated_secret_server(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> Iterator[ServerProcess]:
    """A server in its own folder that generated its device secret into its store."""
    folder = tmp_path / "server"
    folder.mkdir()
    yield start_server(db_path=folder / "tidings.db", TIDINGS_JWT_SECRET="")


def test_listen_from_another_folder_creates_no_store(
    generated_secret_server: ServerProcess, tmp_path: Path
) -> None:
    """Without a store here, listen says where it looked and creates nothing."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (
        ["listen", "alice", "--once", "--url", generated_secret_server.url],
        ["token", "alice"],
    ):
        line = error_line(tidings(*args, cwd=elsewhere))
        assert str(elsewhere / "tidings.db") in line
        assert "--store" in line and "TIDINGS_JWT_SECRET" in line
    assert list(elsewhere.iterdir()) == []


def test_listen_with_another_stores_secret_names_it(
    generated_secret_server: ServerProcess, tmp_path: Path
) -> None:
    """A secret from another store is refused by the server: the error names the store used
    and how to point the command at the server's."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tidings("clients", "create", "other", "--scope", "notify", cwd=elsewhere).check_returncode()
    result = tidings(
        "listen", "alice", "--once", "--url", generated_secret_server.url, cwd=elsewhere
    )
    line = error_line(result)
    assert str(elsewhere / "tidings.db") in line
    assert "--store" in line and "TIDINGS_JWT_SECRET" in line
    # The same command pointed at the server's store is welcome.
    minted = tidings("token", "alice", "--store", generated_secret_server.store_url, cwd=elsewhere)
    with connect(
        generated_secret_server.ws_url,
        additional_headers={"Authorization": f"Bearer {minted.stdout.strip()}"},
    ) as sock:
        assert json.loads(sock.recv(5))["type"] == "welcome"


def test_commands_that_only_read_the_store_create_none(tmp_path: Path) -> None:
    """clients list and delete, like token, refuse a store file that does not exist."""
    for args in (["clients", "list"], ["clients", "delete", "tc_x"]):
        line = error_line(tidings(*args, cwd=tmp_path))
        assert str(tmp_path / "tidings.db") in line
    assert list(tmp_path.iterdir()) == []


# clients


def test_clients_create_warns_of_a_duplicate_name(server: ServerProcess) -> None:
    """A second client of the same name is created (names are labels; ids identify), but the
    command says so and how to remove the first; --replace removes it."""
    name = f"dup-{uuid.uuid4().hex[:6]}"
    first = json.loads(server.cli("clients", "create", name, "--scope", "notify").stdout)
    second = server.cli("clients", "create", name, "--scope", "notify")
    assert json.loads(second.stdout)["name"] == name
    assert first["client_id"] in second.stderr and "--replace" in second.stderr
    assert "tidings clients delete" in second.stderr and len(second.stderr.splitlines()) == 1
    third = json.loads(
        server.cli("clients", "create", name, "--scope", "notify", "--replace").stdout
    )
    listed = [
        c["client_id"]
        for c in json.loads(server.cli("clients", "list").stdout)
        if c["name"] == name
    ]
    assert listed == [third["client_id"]]
    token = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(first["client_id"], first["client_secret"]),
    )
    assert token.status_code == 401


def test_serve_refuses_an_unknown_log_level(tmp_path: Path) -> None:
    """--log-level is one of the known levels, checked by click."""
    port = str(free_port())
    result = tidings("serve", "--log-level", "verbose", "--port", port, cwd=tmp_path)
    assert "--log-level" in error_line(result)
    assert list(tmp_path.iterdir()) == []
