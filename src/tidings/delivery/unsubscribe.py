"""One-click unsubscribe (RFC 8058; docs/pipeline.md, "Unsubscribe"): the signed, expiring link
an email carries in ``List-Unsubscribe``, and what it turns off.

A link names a user, a channel and, when the message had one, a category; it is an HS256 JWT
(audience ``tidings-unsubscribe``) under a key the store keeps for the cluster, so any node
honours it, after restarts too. Its ``POST`` (what mailbox providers send, with the body
``List-Unsubscribe=One-Click``) turns the user's switch off: the category on that channel, or
the whole channel for a message without a category. A ``GET`` only shows a confirmation page,
since mail scanners follow links.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from tidings.auth.jwt import oct_key, sign_jwt, verify_jwt
from tidings.errors import InvalidArgument, InvalidToken

#: the name the store keeps the links' signing key under
KEY_NAME = "unsubscribe_key"
AUDIENCE = "tidings-unsubscribe"
#: the headers of an email that carries a link (RFC 2369, RFC 8058)
LIST_UNSUBSCRIBE = "List-Unsubscribe"
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe-Post"
ONE_CLICK = "List-Unsubscribe=One-Click"


def new_key() -> str:
    return secrets.token_urlsafe(48)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid link turns off."""

    user_id: str
    channel: str
    #: None: the whole channel
    category: str | None


class UnsubscribeLinks:
    """Makes and checks the links of one cluster."""

    def __init__(self, key: str, public_url: str, ttl: float) -> None:
        self._key = oct_key(key)
        self.base = public_url.rstrip("/") + "/unsubscribe"
        self.ttl = ttl

    def url(self, user_id: str, channel: str, category: str | None) -> str:
        claims: dict[str, object] = {
            "sub": user_id,
            "ch": channel,
            "aud": AUDIENCE,
            "exp": int(time.time() + self.ttl),
        }
        if category is not None:
            claims["cat"] = category
        return f"{self.base}?{urlencode({'token': sign_jwt(claims, self._key)})}"

    def headers(self, user_id: str, channel: str, category: str | None) -> dict[str, str]:
        """The two headers of an email that can be unsubscribed from in one click."""
        return {
            LIST_UNSUBSCRIBE: f"<{self.url(user_id, channel, category)}>",
            LIST_UNSUBSCRIBE_POST: ONE_CLICK,
        }

    def check(self, token: str) -> Unsubscribe:
        """What ``token`` turns off.

        Raises:
            InvalidArgument: a forged, altered, expired or malformed link, saying which.
        """
        try:
            claims = verify_jwt(token, self._key, audience=AUDIENCE, leeway=0)
        except InvalidToken as exc:
            reason = str(exc)
            if "expired" in reason:
                raise InvalidArgument(
                    "this unsubscribe link has expired; use a link from a newer email, or "
                    "change your preferences in the application"
                ) from None
            raise InvalidArgument(
                "this unsubscribe link is not valid (it was altered or not made by this "
                "service); nothing was changed"
            ) from None
        user, channel, category = claims.get("sub"), claims.get("ch"), claims.get("cat")
        if not isinstance(user, str) or not isinstance(channel, str):
            raise InvalidArgument("this unsubscribe link names no user or channel")
        if category is not None and not isinstance(category, str):
            raise InvalidArgument("this unsubscribe link names no category")
        return Unsubscribe(user, channel, category)
