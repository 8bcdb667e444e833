"""Locales (docs/pipeline.md, "Locales") end to end: ``tidings serve`` with its workers, email
to an aiosmtpd sink. A template in English with a French translation; a user in ``fr-CA`` (set
with their device JWT) gets the French text with Canadian French numbers, a user in ``de`` (set
by a service) the English text, formatted in English, and so does a user without a locale.
Unknown locales are refused naming the field, and change nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from pipeline_support import SmtpSink, api_client, post_message, sink, text_part, wait_message

from conftest import ServerProcess, device_token

TEMPLATE = {
    "subject": "Order {{ order }} shipped",
    "text": "{{ total | currency('EUR') }} on {{ day | date('long') }}",
    "locale": "en",
}
FRENCH = {
    "subject": "Commande {{ order }} expédiée",
    "text": "{{ total | currency('EUR') }} le {{ day | date('long') }}",
}


def test_each_user_gets_the_template_in_their_locale(
    start_server: Callable[..., ServerProcess], sink: SmtpSink
) -> None:
    node = start_server(TIDINGS_SMTP_URL=sink.url, TIDINGS_PIPELINE_POLL_INTERVAL="0.1")
    template = f"shipped-{uuid.uuid4().hex[:6]}"
    users = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in ("claire", "dieter", "ed")}
    with api_client(node, node.service_token("messages")) as http:
        assert http.put(f"/templates/{template}", json=TEMPLATE).status_code == 201
        answer = http.put(f"/templates/{template}/translations/fr", json=FRENCH)
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["translations"]) == {"fr"}
        for user in users.values():
            contact = {"address": f"{user}@example.org"}
            assert http.put(f"/users/{user}/contacts/email", json=contact).status_code == 200
        mine = httpx.put(
            f"{node.url}/me/locale",
            json={"locale": "fr_ca"},
            headers={"Authorization": f"Bearer {device_token(users['claire'])}"},
        )
        assert mine.status_code == 200 and mine.json() == {"locale": "fr-CA"}, mine.text
        assert http.put(f"/users/{users['dieter']}/locale", json={"locale": "de"}).json() == {
            "locale": "de"
        }
        shown = http.get(f"/users/{users['claire']}/preferences").json()
        assert shown["locale"] == "fr-CA"
        message = post_message(
            http,
            {
                "recipients": {"user_ids": list(users.values())},
                "channels": ["email"],
                "template_id": template,
                "data": {"order": 42, "total": 1234.5, "day": "2026-12-24"},
            },
        )
        wait_message(http, message["message_id"], timeout=15)
    mail = {}
    for name, user in users.items():
        [record] = sink.accepted(address=f"{user}@example.org")
        mail[name] = (record.message["Subject"], (text_part(record.message, "plain") or "").strip())
    assert mail["claire"] == ("Commande 42 expédiée", "1\xa0234,50\xa0€ le 24 décembre 2026")
    assert mail["dieter"] == ("Order 42 shipped", "€1,234.50 on December 24, 2026")
    assert mail["ed"] == mail["dieter"]


@pytest.fixture(scope="module")
def api_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("locales") / "tidings.db").start()
    yield proc
    proc.stop()


def test_unknown_locales_are_refused_and_change_nothing(api_node: ServerProcess) -> None:
    user = f"user-{uuid.uuid4().hex[:6]}"
    template = f"t-{uuid.uuid4().hex[:6]}"
    with api_client(api_node, api_node.service_token("messages")) as http:
        assert http.put(f"/users/{user}/locale", json={"locale": "fr"}).status_code == 200
        for body in ({"locale": "xx"}, {"locale": "en-ZZ"}, {"locale": ""}, {"lang": "fr"}):
            refused = http.put(f"/users/{user}/locale", json=body)
            assert refused.status_code == 422, refused.text
            assert "locale" in refused.text or "lang" in refused.text
        assert http.get(f"/users/{user}/preferences").json()["locale"] == "fr"
        refused = httpx.put(
            f"{api_node.url}/me/locale",
            json={"locale": "klingon"},
            headers={"Authorization": f"Bearer {device_token(user)}"},
        )
        assert refused.status_code == 422 and "locale" in refused.text
        assert (
            http.put(f"/templates/{template}", json={"text": "hi", "locale": "xx"}).status_code
            == 422
        )
        assert http.get(f"/templates/{template}").status_code == 404  # nothing written
        assert http.put(f"/templates/{template}", json={"text": "hi"}).status_code == 201
        bad = http.put(f"/templates/{template}/translations/xx", json={"text": "salut"})
        assert bad.status_code == 422 and "locale" in bad.text, bad.text
        broken = http.put(f"/templates/{template}/translations/fr", json={"text": "{% if %}"})
        assert broken.status_code == 422, broken.text
        assert http.get(f"/templates/{template}").json()["translations"] == {}
        missing = http.put("/templates/none-such/translations/fr", json={"text": "salut"})
        assert missing.status_code == 404
        assert http.delete(f"/templates/{template}/translations/fr").status_code == 404


__all__ = ["sink"]  # the fixture
