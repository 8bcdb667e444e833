"""The pipeline store contract of the preferences facet: channel switches, topic subscriptions and
contact points of a user. Every backend passes it (the ``pstore`` fixture of
:mod:`contract.pipeline_store.backends` runs each test on each)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta

from contract.pipeline_store.backends import (
    RecordingPlanner,
    create,
    new_message,
    one_delivery,
    postgres_template,
    pstore,
)
from tidings.core.models import utcnow
from tidings.delivery.models import FAILED, NewMessage, PlannedDelivery, QuietHours
from tidings.delivery.planner import Recipient
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


async def test_quiet_hours_are_kept_shown_and_given_to_the_planner(pstore: PipelineStore) -> None:
    """set_quiet_hours stores a user's window (replacing the last, None removing it);
    preferences show it and the planner gets it with each recipient."""
    assert (await pstore.preferences("qin")).quiet_hours is None
    await pstore.set_quiet_hours("qin", QuietHours("Europe/Paris", "21:00", "06:00"))
    await pstore.set_quiet_hours("qin", QuietHours("Asia/Kolkata", "22:30", "07:15:30"))
    await pstore.set_quiet_hours("other", QuietHours("Asia/Tokyo", "12:00", "13:00"))
    assert (await pstore.preferences("qin")).quiet_hours == QuietHours(
        "Asia/Kolkata", "22:30", "07:15:30"
    )
    _, _, planner = await create(pstore, new_message(("qin", "nobody"), ("in_app",)))
    seen = planner.by_user()
    assert seen["qin"].quiet == QuietHours("Asia/Kolkata", "22:30", "07:15:30")
    assert seen["nobody"].quiet is None
    await pstore.set_quiet_hours("qin", None)
    assert (await pstore.preferences("qin")).quiet_hours is None
    assert (await pstore.preferences("other")).quiet_hours is not None


class LaterPlanner(RecordingPlanner):
    """Plans as the pipeline does, every delivery to be sent not before ``when``."""

    def __init__(self, message: NewMessage, when: datetime) -> None:
        super().__init__(message)
        self.when = when

    def __call__(self, recipients: list[Recipient]) -> list[PlannedDelivery]:
        return [
            replace(p, reason="delayed", not_before=self.when) for p in super().__call__(recipients)
        ]


async def test_a_delivery_planned_for_later_is_claimed_only_once_due(
    pstore: PipelineStore,
) -> None:
    """A planned delivery's ``not_before`` (a delay step, quiet hours) is its outbox time:
    no worker claims it before, one does after."""
    message = new_message(("lena",), ("in_app",))
    planner = LaterPlanner(message, utcnow() + timedelta(seconds=1.5))
    created, _, _ = await create(pstore, message, planner=planner)
    assert await pstore.claim(["in_app"], "w", 10, 30.0) == []
    await asyncio.sleep(1.6)
    (claim,) = await pstore.claim(["in_app"], "w", 10, 30.0)
    assert claim.message_id == created.message_id
