"""The framework-free answers of ``tidings serve`` for /notify, /notify/batch and /publish
match the FastAPI routes that document them, request for request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tidings import Tidings
from tidings.api.app import create_api
from tidings.auth.oauth import create_client
from tidings.server import TidingsApp

CASES: list[tuple[str, str, Any]] = [
    ("/notify", "notify", {"user_id": "u", "data": {"text": "hi"}}),
    ("/notify", "none", {"user_id": "u", "data": 1}),
    ("/notify", "publish", {"user_id": "u", "data": 1}),
    ("/notify", "notify", {"data": 1}),
    ("/notify", "notify", b"{not json"),
    ("/notify", "notify", {"user_id": "u", "data": "x" * 70_000}),
    ("/notify", "notify", {"user_id": "nul\u0000", "data": 1}),
    ("/notify", "notify", {"user_id": "u", "data": {"n": 1}, "notification_id": "same-id"}),
    ("/notify", "notify", {"user_id": "v", "data": {"n": 1}, "notification_id": "same-id"}),
    (
        "/notify/batch",
        "notify",
        {"notifications": [{"user_id": "u", "data": 1}, {"user_id": "v", "data": [2]}]},
    ),
    ("/notify/batch", "publish", {"notifications": [{"user_id": "u", "data": 1}]}),
    ("/notify/batch", "notify", {"notifications": []}),
    ("/notify/batch", "notify", {"notifications": [{"user_id": "u"}]}),
    ("/notify/batch", "notify", {"notifications": [{"user_id": 5, "data": 1}]}),
    ("/notify/batch", "notify", b'{"notifications": [{"user_id": "u", "data": 1}'),
    (
        "/notify/batch",
        "notify",
        b'{"notifications": [{"user_id": "u", "data": 123456789012345678901234}]}',
    ),
    (
        "/notify/batch",
        "notify",
        {
            "notifications": [
                {"user_id": "u", "data": {"n": 1}, "notification_id": "same-id"},
                {"user_id": "v", "data": {"n": 1}, "notification_id": "same-id"},
                {"user_id": "u", "data": "x" * 70_000},
                {"user_id": "nul\u0000", "data": 1},
            ]
        },
    ),
    ("/notify/batch", "notify", {"notifications": [{"user_id": "u", "data": 1}] * 1001}),
    ("/publish", "publish", {"topic": "t", "data": {"x": 1}, "origin_session_id": "s"}),
    ("/publish", "notify", {"topic": "t", "data": 1}),
    ("/publish", "publish", {"topic": "a\nb", "data": 1}),
    ("/publish", "publish", {"data": 1}),
]


def without_generated(value: Any) -> Any:
    """``value`` without the generated ids and dates, at any depth."""
    if isinstance(value, dict):
        return {
            k: without_generated(v)
            for k, v in value.items()
            if k not in ("notification_id", "creation_date")
        }
    if isinstance(value, list):
        return [without_generated(v) for v in value]
    return value


def comparable(response: httpx.Response) -> tuple[int, Any, str | None]:
    body = response.json()
    if isinstance(body, dict):
        body = without_generated(body)
        if "detail" in body:  # the parser's message and input may differ; where and what may not
            body["detail"] = [(d["loc"], d["type"]) for d in body["detail"]]
    return response.status_code, body, response.headers.get("www-authenticate")


@pytest.mark.parametrize(("path", "scope", "body"), CASES)
async def test_fast_route_answers_like_the_framework(
    tmp_path: Path, path: str, scope: str, body: Any
) -> None:
    """Same status, same body (but generated ids and dates), same challenge, for good and
    refused requests alike; each app gets a fresh store so both see the same state."""
    answers = []
    for name, build in (("fast", TidingsApp), ("framework", None)):
        async with Tidings(store=f"sqlite:///{tmp_path}/{name}.db", jwt_secret="s" * 40) as t:
            app: Any = (
                build(t, manage_lifespan=False) if build else create_api(t, manage_lifespan=False)
            )
            headers = {}
            if scope != "none":
                client, secret = await create_client(t.store, "svc", [scope])
                issued = await t.service_auth.issue(client.client_id, secret, scope)
                headers["Authorization"] = f"Bearer {issued.access_token}"
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                if path == "/notify" and "same-id" in str(body):  # a first owner of the id
                    await http.post(
                        path,
                        json={"user_id": "u", "data": {"n": 1}, "notification_id": "same-id"},
                        headers=headers,
                    )
                if isinstance(body, bytes):
                    response = await http.post(
                        path, content=body, headers={**headers, "content-type": "application/json"}
                    )
                else:
                    response = await http.post(path, json=body, headers=headers)
            answers.append(comparable(response))
    assert answers[0] == answers[1]
