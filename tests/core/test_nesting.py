"""Nesting: data deeper than ``MAX_DATA_DEPTH`` is refused by every door that stores it (the
facade, the fast and the framework routes alike), and whatever the node accepts can be written
in every answer and frame; a value that cannot (stored by other means) is replaced by a marker
instead of failing the answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings import Tidings
from tidings.api.app import create_api, notify_batch_answer
from tidings.api.schemas import NotificationOut
from tidings.auth.oauth import create_client
from tidings.core.models import (
    MAX_DATA_DEPTH,
    ORJSON_LEVELS,
    NewNotification,
    Notification,
    NotifyResult,
    nests_deeper,
    walk_nests_deeper,
)
from tidings.errors import InvalidArgument
from tidings.fanout import codec as protocol
from tidings.server import TidingsApp


def nest(levels: int, kind: str = "list") -> Any:
    value: Any = 'leaf [{"\\'
    for level in range(levels):
        value = [value] if kind == "list" or level % 2 else {"k[": value}
    return value


def depth(value: Any) -> int:
    """Levels of lists and dicts (without recursion: values may nest 1000 deep)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
            deepest = max(deepest, level + 1)
    return deepest


odd_text = st.text(alphabet=st.sampled_from(list('[]{}"\\ab\x00\n\u00e9\U0001f600')), max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | odd_text
)
shallow = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=12,
)


@st.composite
def nested(draw: st.DrawFn) -> Any:
    """A shallow value at the bottom of 0 to 300 levels of lists and objects."""
    value = draw(shallow)
    for kind in draw(st.lists(st.sampled_from(["list", "dict"]), max_size=300)):
        siblings = draw(st.lists(shallow, max_size=1))
        value = [*siblings, value] if kind == "list" else {"k": value, "s": siblings}
    return value


@settings(max_examples=300, deadline=None)
@given(value=nested() | shallow, limit=st.integers(0, 70))
def test_nests_deeper_is_exact(value: Any, limit: int) -> None:
    assert walk_nests_deeper(value, limit) == (depth(value) > limit)
    try:
        encoded = orjson.dumps(value)
    except TypeError:  # deeper than orjson writes
        assert depth(value) > ORJSON_LEVELS
        return
    assert nests_deeper(value, encoded, limit) == (depth(value) > limit)


@pytest.fixture
def tidings(tmp_path: Path) -> Iterator[tuple[Tidings, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    node = Tidings(store=f"sqlite:///{tmp_path}/t.db", jwt_secret="s" * 40)
    loop.run_until_complete(node.start())
    yield node, loop
    loop.run_until_complete(node.close())
    loop.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=nested() | shallow)
def test_what_the_node_accepts_it_can_write_everywhere(
    tidings: tuple[Tidings, asyncio.AbstractEventLoop], value: Any
) -> None:
    """Any JSON the facade accepts can be answered by /notify, /notify/batch and in every
    frame; anything deeper than the limit is refused with the limit named."""
    node, loop = tidings
    user = f"h-{uuid.uuid4().hex}"

    async def run() -> None:
        try:
            result = await node.notify(user, value)
        except InvalidArgument as exc:
            if depth(value) > MAX_DATA_DEPTH:
                assert str(MAX_DATA_DEPTH) in str(exc)
            return
        assert depth(value) <= MAX_DATA_DEPTH
        note = result.notification
        NotificationOut.of(note).model_dump_json()
        orjson.loads(protocol.notification(note))
        (stored,) = await node.unseen(user, 1000)
        frame = orjson.loads(protocol.notification_data(1, [stored]))
        assert frame["notifications"][0]["data"] == orjson.loads(orjson.dumps(value))
        await node.mark_seen(user, [stored.notification_id])
        body = orjson.dumps({"notifications": [{"user_id": user, "data": value}]})
        status, answer = await notify_batch_answer(node, body)
        assert status == 200 and orjson.loads(answer)["results"][0]["status"] == 201

    loop.run_until_complete(run())


@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH + 1, 100, 254, 255, 600])
async def test_the_facade_refuses_deep_data_and_writes_nothing(tmp_path: Path, levels: int) -> None:
    async with Tidings(store=f"sqlite:///{tmp_path}/t.db", jwt_secret="s" * 40) as node:
        for kind in ("list", "dict"):
            with pytest.raises(InvalidArgument, match=f"limit is {MAX_DATA_DEPTH}"):
                await node.notify("alice", nest(levels, kind))
            with pytest.raises(InvalidArgument, match=f"limit is {MAX_DATA_DEPTH}"):
                await node.publish("topic", nest(levels, kind))
        outcomes = await node.notify_many(
            [NewNotification("alice", nest(levels)), NewNotification("alice", nest(64, "dict"))]
        )
        assert isinstance(outcomes[0], InvalidArgument)
        assert f"limit is {MAX_DATA_DEPTH}" in str(outcomes[0])
        assert isinstance(outcomes[1], NotifyResult)
        assert (await node.count("alice")).count == 1
        assert (await node.topic_log("topic", 0)).messages == []
        await node.notify("alice", nest(MAX_DATA_DEPTH, "dict"))
        await node.publish("topic", nest(MAX_DATA_DEPTH))


def test_frames_replace_data_they_cannot_write() -> None:
    """A notification held in memory whose data no encoder writes (a custom store's, say)
    is sent with the marker, not raised out of the answer or the delivery."""
    now = datetime.now(UTC)
    bad = Notification("n-bad", "alice", nest(300), now)
    good = Notification("n-good", "alice", {"ok": True}, now)
    frame = orjson.loads(protocol.notification_data(7, [bad, good]))
    assert [n["notification_id"] for n in frame["notifications"]] == ["n-bad", "n-good"]
    assert frame["notifications"][0]["data"]["tidings_error"] == "unreadable_data"
    assert frame["notifications"][1]["data"] == {"ok": True}
    pushed = orjson.loads(protocol.notification(bad))
    assert pushed["notification"]["notification_id"] == "n-bad"
    assert pushed["notification"]["data"]["tidings_error"] == "unreadable_data"


def nest_json(levels: int, kind: str = "list") -> str:
    """``nest(levels, kind)`` as JSON text (without a recursive encoder)."""
    text = '"leaf [{\\"\\\\"'
    for level in range(levels):
        text = f"[{text}]" if kind == "list" or level % 2 else f'{{"k[":{text}}}'
    return text


#: (path, scope, body, how deep its data nests)
DEEP_CASES: list[tuple[str, str, str, int]] = [
    *[
        ("/notify", "notify", f'{{"user_id":"u","data":{nest_json(levels, kind)}}}', levels)
        for levels, kind in [
            (MAX_DATA_DEPTH, "dict"),
            (MAX_DATA_DEPTH + 1, "list"),
            (150, "dict"),
            (254, "list"),
            (900, "dict"),
            (1100, "list"),
        ]
    ],
    (
        "/notify/batch",
        "notify",
        '{"notifications":['
        f'{{"user_id":"u","data":{nest_json(MAX_DATA_DEPTH + 1)}}},'
        '{"user_id":"u","data":1},'
        f'{{"user_id":"u","data":{nest_json(MAX_DATA_DEPTH)}}}]}}',
        MAX_DATA_DEPTH + 1,
    ),
    *[
        ("/publish", "publish", f'{{"topic":"t","data":{nest_json(levels, kind)}}}', levels)
        for levels, kind in [(MAX_DATA_DEPTH + 1, "dict"), (180, "list"), (400, "dict")]
    ],
]


@pytest.mark.parametrize(("path", "scope", "body", "levels"), DEEP_CASES)
async def test_fast_and_framework_routes_refuse_alike(
    tmp_path: Path, path: str, scope: str, body: str, levels: int
) -> None:
    answers = []
    for name, build in (("fast", TidingsApp), ("framework", None)):
        async with Tidings(store=f"sqlite:///{tmp_path}/{name}.db", jwt_secret="s" * 40) as t:
            app: Any = (
                build(t, manage_lifespan=False) if build else create_api(t, manage_lifespan=False)
            )
            client, secret = await create_client(t.store, "svc", [scope])
            issued = await t.service_auth.issue(client.client_id, secret, scope)
            headers = {
                "Authorization": f"Bearer {issued.access_token}",
                "Content-Type": "application/json",
            }
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                response = await http.post(path, content=body.encode(), headers=headers)
            answer = orjson.loads(response.content) if levels < 250 else json.loads(response.text)
            for result in answer.get("results", ()):
                result.pop("notification", None)
            for generated in ("notification_id", "creation_date", "data"):
                answer.pop(generated, None)
            if isinstance(answer.get("detail"), list):  # where and what, as test_fast_routes
                answer["detail"] = [(d["loc"], d["type"]) for d in answer["detail"]]
            answers.append((response.status_code, answer))
    assert answers[0] == answers[1]
    status, answer = answers[0]
    if path == "/notify/batch":
        assert status == 200
        assert [r["status"] for r in answer["results"]] == [422, 201, 201]
        assert f"limit is {MAX_DATA_DEPTH}" in answer["results"][0]["message"]
    elif levels >= 990:  # past what the standard library's JSON reader takes, as FastAPI
        assert (status, answer) == (400, {"detail": "There was an error parsing the body"})
    elif levels > MAX_DATA_DEPTH:
        assert status == 422
        assert f"limit is {MAX_DATA_DEPTH}" in answer["message"]
    else:
        assert status in (201, 202)
