"""An application's own channel, registered by instance (``Tidings(channels=[...])``) or by
entry point (a real distribution on ``sys.path``), is addressed by name like a built-in:
in messages, preferences, contact points, templates and rate limits."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from tidings import Tidings
from tidings.auth.oauth import create_client
from tidings.config import load_settings
from tidings.delivery.channels.base import Channel, Outgoing
from tidings.delivery.models import Content, Message
from tidings.delivery.planner import RateLimit
from tidings.delivery.registry import ChannelRegistry
from tidings.errors import ConfigurationError, InvalidAddress, InvalidArgument
from tidings.node.app import TidingsApp


class PigeonChannel(Channel):
    """Carries a delivery to a loft (its contact point: ``loft:<name>``); keeps what it sent."""

    name: ClassVar[str] = "pigeon"

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    def validate(self, address: Any) -> str:
        if not isinstance(address, str) or not address.startswith("loft:"):
            raise InvalidAddress("a pigeon flies to loft:<name>")
        return address.lower()

    async def send(self, outgoing: Outgoing) -> str | None:
        self.sent.append(outgoing)
        return f"ring-{len(self.sent)}"


#: an application's distribution that registers a channel through the entry-point group
COURIER = '''
from tidings.delivery.channels.base import Channel


class CourierChannel(Channel):
    """Needs no contact point; built from the settings by the default from_settings()."""

    name = "courier"
    needs_address = False

    def __init__(self):
        self.sent = []

    async def send(self, outgoing):
        self.sent.append(outgoing)
        return None
'''


@pytest.fixture
def courier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The distribution ``mychan`` 1.0, found by importlib.metadata on ``sys.path``."""
    root = tmp_path / "site"
    (root / "mychan").mkdir(parents=True)
    (root / "mychan" / "__init__.py").write_text(COURIER)
    info = root / "mychan-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mychan\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tidings.channels]\ncourier = mychan:CourierChannel\n")
    monkeypatch.syspath_prepend(str(root))
    return root


async def settled(node: Tidings, message_id: str) -> Message:
    """The message once none of its deliveries is pending or active."""
    found: Message | None = None
    for _ in range(200):
        found = await node.pipeline.store.get_message(message_id, None)
        assert found is not None
        if found.deliveries and all(
            d.state in ("sent", "failed", "deleted") for d in found.deliveries
        ):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"message {message_id} did not settle: {found}")


async def test_channel_given_as_instance_is_addressed_by_name(tmp_path: Path) -> None:
    """A message to the application's channel reaches it, rendered, once; the delivery is sent;
    its contact point is validated by the channel and its rate limit applies."""
    pigeon = PigeonChannel()
    async with Tidings(
        store=f"sqlite:///{tmp_path}/p.db",
        channels=[pigeon],
        rate_limits={"pigeon": "1/hour"},
        pipeline_poll_interval=0.05,
    ) as node:
        assert node.pipeline.limits["pigeon"] == RateLimit(1, 3600.0)
        assert "pigeon" in node.pipeline.names
        with pytest.raises(InvalidAddress, match="loft"):
            await node.pipeline.set_contact("ann", "pigeon", "the moon")
        assert await node.pipeline.set_contact("ann", "pigeon", "loft:North") == "loft:north"
        await node.pipeline.put_template("hi", Content("Hi {{ name }} by {{ channel }}", "Hey"))
        message = await node.pipeline.post(
            ["pigeon"], user_ids=["ann"], template_id="hi", data={"name": "Ann"}
        )
        done = await settled(node, message.message_id)
        assert done.deliveries is not None
        [delivery] = done.deliveries
        assert (delivery.channel, delivery.state, delivery.provider_id) == (
            "pigeon",
            "sent",
            "ring-1",
        )
        [sent] = pigeon.sent
        assert (sent.user_id, sent.address, sent.delivery_id) == (
            "ann",
            "loft:north",
            delivery.delivery_id,
        )
        assert (sent.rendered.subject, sent.rendered.text) == ("Hey", "Hi Ann by pigeon")
        assert sent.rendered.data == {"name": "Ann"}
        assert node.counters.sends[("pigeon", "sent")] == 1
        again = await node.pipeline.post(["pigeon"], user_ids=["ann"], content=Content("x"))
        limited = await settled(node, again.message_id)
        assert limited.deliveries is not None
        assert [(d.state, d.reason) for d in limited.deliveries] == [("failed", "rate_limited")]
        await node.pipeline.set_channel("ann", "pigeon", False)
        assert (await node.pipeline.preferences("ann")).channels == {"pigeon": False}
    assert len(pigeon.sent) == 1


async def test_channel_registered_by_entry_point(
    tmp_path: Path, courier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution's ``tidings.channels`` entry point makes its channel known by name, to
    the settings a server loads and to the pipeline, which builds it from the settings."""
    assert "courier" in ChannelRegistry().names()
    monkeypatch.setenv("TIDINGS_RATE_LIMITS", json.dumps({"courier": "5/minute"}))
    settings = load_settings(store=f"sqlite:///{tmp_path}/p.db", pipeline_poll_interval=0.05)
    async with Tidings(settings) as node:
        assert node.pipeline.limits["courier"] == RateLimit(5, 60.0)
        message = await node.pipeline.post(
            ["courier", "in_app"],
            user_ids=["bob"],
            content=Content("Parcel {{ n }}"),
            data={"n": 7},
        )
        done = await settled(node, message.message_id)
        assert done.deliveries is not None
        assert {(d.channel, d.state) for d in done.deliveries} == {
            ("courier", "sent"),
            ("in_app", "sent"),
        }
        channel: Any = node.pipeline.channels["courier"]
        assert type(channel).__module__ == "mychan"
        [sent] = channel.sent
        assert (sent.user_id, sent.address, sent.rendered.text) == ("bob", None, "Parcel 7")


async def test_unknown_channel_in_a_message_is_refused(tmp_path: Path) -> None:
    """A message naming a channel nobody registered is refused, naming it and the known
    ones, and nothing is written."""
    async with Tidings(store=f"sqlite:///{tmp_path}/p.db", workers=0) as node:
        with pytest.raises(InvalidArgument) as refused:
            await node.pipeline.post(["in_app", "pigeon"], user_ids=["a"], content=Content("x"))
        assert str(refused.value) == (
            "unknown channel 'pigeon'; channels must be among "
            "in_app, email, webhook, web_push, sms, apns, fcm, expo"
        )
        with pytest.raises(InvalidArgument, match="pigeon"):
            await node.pipeline.set_channel("a", "pigeon", False)
        assert await node.pipeline.store.list_messages(None, 10) == []


async def test_rate_limit_for_an_unknown_channel_stops_the_pipeline(tmp_path: Path) -> None:
    """A rate limit naming no registered or given channel stops the node at start, in one line
    naming the setting; the settings a server loads refuse it already."""
    with pytest.raises(ConfigurationError) as refused:
        async with Tidings(store=f"sqlite:///{tmp_path}/p.db", rate_limits={"pigeon": "1/hour"}):
            pass
    assert str(refused.value).startswith("TIDINGS_RATE_LIMITS: rate limit for unknown channel")
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigurationError, match=r"^TIDINGS_RATE_LIMITS=.*'pigeon'.*in_app"):
        load_settings(rate_limits={"pigeon": "1/hour"})


def test_entry_point_naming_another_channel_is_refused(courier: Path) -> None:
    """An entry point whose class declares another name is a configuration error."""
    (courier / "mychan-1.0.dist-info" / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [tidings.channels]
            parcel = mychan:CourierChannel
            """
        )
    )
    registry = ChannelRegistry()
    with pytest.raises(ConfigurationError, match="declares the name 'courier'"):
        registry.load("parcel")


def test_builtins_register_through_the_entry_point_group() -> None:
    """tidings' own five channels are entry points of ``tidings.channels``, in documented
    order, each a class declaring the name it is registered under."""
    registry = ChannelRegistry()
    builtins = ("in_app", "email", "webhook", "web_push", "sms", "apns", "fcm", "expo")
    assert registry.names()[:8] == builtins
    assert [registry.load(name).name for name in builtins] == list(builtins)


async def test_instance_replaces_the_registered_channel_of_its_name(tmp_path: Path) -> None:
    """A given instance named like a built-in replaces it: email goes through it even with no
    SMTP server configured."""

    class LoggedEmail(PigeonChannel):
        name: ClassVar[str] = "email"

        def validate(self, address: Any) -> str:
            return str(address)

    logged = LoggedEmail()
    async with Tidings(
        store=f"sqlite:///{tmp_path}/p.db", channels=[logged], pipeline_poll_interval=0.05
    ) as node:
        assert node.pipeline.channels["email"] is logged
        await node.pipeline.set_contact("cy", "email", "cy@example.org")
        message = await node.pipeline.post(["email"], user_ids=["cy"], content=Content("Hi"))
        done = await settled(node, message.message_id)
        assert done.deliveries is not None
        assert [d.state for d in done.deliveries] == ["sent"]
    assert [o.address for o in logged.sent] == ["cy@example.org"]


async def test_http_api_addresses_the_applications_channel_by_name(tmp_path: Path) -> None:
    """Over HTTP the application's channel is a channel like the built-ins: a message on it is
    accepted, its switch and contact point are set and removed; an unknown name is refused
    with 422 ``invalid_argument`` and writes nothing."""
    pigeon = PigeonChannel()
    async with Tidings(
        store=f"sqlite:///{tmp_path}/h.db", channels=[pigeon], pipeline_poll_interval=0.05
    ) as node:
        client, secret = await create_client(node.store, "svc", ["messages"])
        issued = await node.service_auth.issue(client.client_id, secret, "messages")
        headers = {"Authorization": f"Bearer {issued.access_token}"}
        app = TidingsApp(node, manage_lifespan=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            contact = await http.put(
                "/users/ann/contacts/pigeon", json={"address": "loft:South"}, headers=headers
            )
            assert (contact.status_code, contact.json()) == (
                200,
                {"channel": "pigeon", "address": "loft:south"},
            )
            posted = await http.post(
                "/messages",
                json={
                    "recipients": {"user_ids": ["ann"]},
                    "channels": ["pigeon"],
                    "content": {"text": "coo"},
                },
                headers=headers,
            )
            assert posted.status_code == 202, posted.text
            done = await settled(node, posted.json()["message_id"])
            assert [(d.channel, d.state) for d in done.deliveries or []] == [("pigeon", "sent")]
            assert [sent.address for sent in pigeon.sent] == ["loft:south"]

            switch = await http.put(
                "/users/ann/channels/pigeon", json={"enabled": False}, headers=headers
            )
            assert (switch.status_code, switch.json()) == (
                200,
                {"channel": "pigeon", "enabled": False},
            )
            removed = await http.delete("/users/ann/contacts/pigeon", headers=headers)
            assert (removed.status_code, removed.json()["address"]) == (200, None)
            preferences = await node.pipeline.preferences("ann")
            assert preferences.channels == {"pigeon": False}
            assert "pigeon" not in preferences.contacts

            before = await node.pipeline.store.list_messages(None, 50)
            for method, path, body in (
                (
                    "POST",
                    "/messages",
                    {
                        "recipients": {"user_ids": ["ann"]},
                        "channels": ["pigeon", "owl"],
                        "content": {"text": "hoo"},
                    },
                ),
                ("PUT", "/users/ann/channels/owl", {"enabled": False}),
                ("PUT", "/users/ann/contacts/owl", {"address": "tree:oak"}),
                ("DELETE", "/users/ann/contacts/owl", None),
            ):
                refused = await http.request(method, path, json=body, headers=headers)
                assert refused.status_code == 422, (path, refused.text)
                assert refused.json()["error"] == "invalid_argument"
                assert "unknown channel 'owl'" in refused.json()["message"]
            too_long = await http.put(
                "/users/ann/channels/" + "p" * 65, json={"enabled": True}, headers=headers
            )
            assert too_long.status_code == 422
            assert await node.pipeline.store.list_messages(None, 50) == before
            assert (await node.pipeline.preferences("ann")).channels == {"pigeon": False}


@pytest.mark.parametrize("name", ["", "Pigeon", "1owl", "with space", "x" * 65, "a-b"])
async def test_a_channel_name_that_cannot_be_a_url_or_label_is_refused(
    tmp_path: Path, name: str
) -> None:
    """A channel's name appears in URLs, settings and metric labels: a node given a channel
    whose name cannot be one does not start, and says why in one line."""

    class Badly(PigeonChannel):
        pass

    badly = Badly()
    badly.name = name  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match="a channel's name is lower-case letters"):
        async with Tidings(store=f"sqlite:///{tmp_path}/n.db", channels=[badly]):
            pass
