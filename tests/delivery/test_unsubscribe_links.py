"""One-click unsubscribe links (RFC 8058): what a link says survives the round trip, and a link
that was forged (another key), altered (its user swapped), expired or mangled is refused with
words saying which, before anything could change."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from tidings.delivery.unsubscribe import (
    LIST_UNSUBSCRIBE,
    LIST_UNSUBSCRIBE_POST,
    Unsubscribe,
    UnsubscribeLinks,
    new_key,
)
from tidings.errors import InvalidArgument

KEY = new_key()


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def test_a_link_names_its_user_channel_and_category() -> None:
    links = UnsubscribeLinks(KEY, "https://push.example.com/", 3600)
    url = links.url("alice", "email", "comments")
    assert url.startswith("https://push.example.com/unsubscribe?token=")
    assert links.check(token_of(url)) == Unsubscribe("alice", "email", "comments")
    assert links.check(token_of(links.url("bob", "email", None))) == Unsubscribe(
        "bob", "email", None
    )
    headers = links.headers("alice", "email", None)
    assert headers[LIST_UNSUBSCRIBE].startswith("<https://push.example.com/unsubscribe?token=")
    assert headers[LIST_UNSUBSCRIBE].endswith(">")
    assert headers[LIST_UNSUBSCRIBE_POST] == "List-Unsubscribe=One-Click"


def test_another_services_link_is_refused() -> None:
    theirs = UnsubscribeLinks(new_key(), "https://push.example.com", 3600)
    ours = UnsubscribeLinks(KEY, "https://push.example.com", 3600)
    with pytest.raises(InvalidArgument, match="not valid"):
        ours.check(token_of(theirs.url("alice", "email", None)))


def test_a_link_with_another_user_put_in_is_refused() -> None:
    links = UnsubscribeLinks(KEY, "https://push.example.com", 3600)
    header, payload, signature = token_of(links.url("alice", "email", None)).split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "bob"
    swapped = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    with pytest.raises(InvalidArgument, match="not valid"):
        links.check(f"{header}.{swapped}.{signature}")


def test_an_expired_link_says_so() -> None:
    links = UnsubscribeLinks(KEY, "https://push.example.com", 0.01)
    token = token_of(links.url("alice", "email", None))
    time.sleep(1.05)
    with pytest.raises(InvalidArgument, match="expired"):
        links.check(token)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 500])
def test_mangled_links_are_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="not valid"):
        UnsubscribeLinks(KEY, "https://push.example.com", 3600).check(token)
