"""A user's history of notifications, page by page: newest first, filtered by state and
category, continued with an opaque cursor.

A cursor names the position of the last notification of a page (the log position of the store,
so new notifications never move a page already begun) and the filters it was made for, signed
with a key of the node's store: it cannot be forged, nor used by another user, nor with other
filters. Any node of the cluster takes a cursor another made (they share the key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from typing import Protocol

import orjson

from tidings.core.limits import MAX_CATEGORY_LENGTH, MAX_CURSOR_LENGTH
from tidings.core.limits import MAX_HISTORY_PAGE as MAX_PAGE
from tidings.core.models import HISTORY_STATES, HistoryState, Notification
from tidings.errors import InvalidArgument

#: the store's name for the key cursors are signed with
CURSOR_KEY = "history-cursor-key"
_VERSION = 1


class HistoryStore(Protocol):
    async def history(
        self,
        user_id: str,
        state: HistoryState,
        category: str | None,
        before: int | None,
        limit: int,
    ) -> list[Notification]: ...

    async def get_or_create_key(self, name: str, factory: Callable[[], str]) -> str: ...


class History:
    """Pages of users' histories."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._key: bytes | None = None

    async def page(
        self,
        user_id: str,
        state: str = "all",
        category: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Notification], str | None]:
        """A page of the user's notifications, and the cursor of the next (``None`` at the
        end).

        Raises:
            InvalidArgument: an unknown state, a category or limit out of bounds, or a cursor
                that is not one this user was given for these filters.
        """
        checked = check_state(state)
        if category is not None and not 0 < len(category) <= MAX_CATEGORY_LENGTH:
            raise InvalidArgument(f"category must be 1 to {MAX_CATEGORY_LENGTH} characters")
        if not 0 < limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be 1 to {MAX_PAGE}")
        key = await self._signing_key()
        before = None
        if cursor is not None:
            before = read_cursor(key, cursor, user_id, checked, category)
        # One more than asked: whether a next page exists is known without another query.
        notes = await self.store.history(user_id, checked, category, before, limit + 1)
        if len(notes) <= limit:
            return notes, None
        notes = notes[:limit]
        return notes, make_cursor(key, user_id, checked, category, notes[-1].seq)

    async def _signing_key(self) -> bytes:
        if self._key is None:
            text = await self.store.get_or_create_key(CURSOR_KEY, lambda: secrets.token_urlsafe(32))
            self._key = text.encode()
        return self._key


def check_state(state: str) -> HistoryState:
    if state not in HISTORY_STATES:
        raise InvalidArgument(f"state must be one of {', '.join(HISTORY_STATES)}, not {state!r}")
    return state


def _mac(key: bytes, user_id: str, payload: bytes) -> bytes:
    signed = orjson.dumps(user_id) + b"\n" + payload
    return hmac.new(key, signed, hashlib.sha256).digest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_cursor(
    key: bytes, user_id: str, state: HistoryState, category: str | None, seq: int
) -> str:
    """The cursor of the page after the notification at log position ``seq``."""
    payload = orjson.dumps([_VERSION, state, category, seq])
    return f"{_b64(payload)}.{_b64(_mac(key, user_id, payload))}"


def read_cursor(
    key: bytes, cursor: str, user_id: str, state: HistoryState, category: str | None
) -> int:
    """The log position a cursor continues before.

    Raises:
        InvalidArgument: it is malformed, forged, another user's, or for other filters.
    """
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidArgument("cursor is not a cursor of this service")
    try:
        encoded, _, signature = cursor.partition(".")
        payload, mac = _unb64(encoded), _unb64(signature)
    except (binascii.Error, ValueError):
        raise InvalidArgument("cursor is not a cursor of this service") from None
    if not hmac.compare_digest(mac, _mac(key, user_id, payload)):
        raise InvalidArgument("cursor is not one of this user's pages") from None
    found: Sequence[object] = orjson.loads(payload)
    if list(found[1:3]) != [state, category]:
        raise InvalidArgument(
            "cursor belongs to other filters: ask with the state and category it came with"
        )
    seq = found[3]
    assert isinstance(seq, int)  # signed by this service: it wrote an int
    return seq
