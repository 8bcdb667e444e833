"""The pipeline store contract of the preferences facet: channel switches, topic subscriptions and
contact points of a user. Every backend passes it (the ``pstore`` fixture of
:mod:`contract.pipeline_store.backends` runs each test on each)."""

from __future__ import annotations

from contract.pipeline_store.backends import (
    create,
    new_message,
    one_delivery,
    postgres_template,
    pstore,
)
from tidings.delivery.models import FAILED
from tidings.delivery.stores.base import PipelineStore

__all__ = ["postgres_template", "pstore"]  # the fixtures


async def test_preferences_reflect_settings(pstore: PipelineStore) -> None:
    """preferences shows channel switches, topics and contacts; set_contact(None) removes."""
    empty = await pstore.preferences("alice")
    assert empty.user_id == "alice"
    assert (empty.channels, empty.topics, empty.contacts) == ({}, [], {})
    await pstore.set_channel("alice", "email", False)
    await pstore.set_channel("alice", "sms", False)
    await pstore.set_channel("alice", "sms", True)
    await pstore.set_topic("alice", "orders", True)
    await pstore.set_topic("alice", "news", True)
    await pstore.set_topic("alice", "news", False)
    subscription = {"endpoint": "https://push.example/x", "keys": {"p256dh": "k", "auth": "a"}}
    await pstore.set_contact("alice", "email", "alice@example.org")
    await pstore.set_contact("alice", "web_push", subscription)
    await pstore.set_contact("alice", "email", "alice@example.net")
    prefs = await pstore.preferences("alice")
    assert prefs.enabled("email") is False
    assert prefs.enabled("sms") is True
    assert prefs.enabled("in_app") is True
    assert prefs.channels.get("email") is False
    assert prefs.topics == ["orders"]
    assert prefs.contacts == {"email": "alice@example.net", "web_push": subscription}
    await pstore.set_contact("alice", "email", None)
    prefs = await pstore.preferences("alice")
    assert prefs.contacts == {"web_push": subscription}
    other = await pstore.preferences("bob")
    assert (other.channels, other.topics, other.contacts) == ({}, [], {})


async def test_removed_contact_is_no_address(pstore: PipelineStore) -> None:
    """After set_contact(None) the planner sees no contact and the delivery is no_address."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    await pstore.set_contact("alice", "email", None)
    message, _, planner = await create(pstore, new_message(("alice",), ("email",)))
    assert planner.by_user()["alice"].contacts.get("email") is None
    delivery = await one_delivery(pstore, message.message_id)
    assert (delivery.state, delivery.reason) == (FAILED, "no_address")
