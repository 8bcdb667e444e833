"""What the phone channels (``apns``, ``fcm``) share: a delivery goes to every push token the
user registered on the channel's platform, each token's outcome is a note in the delivery's
history, and the tokens the provider calls gone leave the registry.

A subclass sends to one token (:meth:`PhoneChannel.push`) and answers with a :class:`Push`.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from tidings.core.models import PushToken
from tidings.delivery.channels.base import Channel, Outgoing, Sent
from tidings.errors import ConfigurationError, PermanentFailure, TransientFailure

if TYPE_CHECKING:
    from tidings.storage import Store

SENT, GONE, RETRY, FAILED = "sent", "gone", "retry", "failed"
#: the history's reason for each kind of token outcome
NOTES = {SENT: "token_sent", GONE: "token_removed", RETRY: "token_retry", FAILED: "token_failed"}


@dataclass(frozen=True, slots=True)
class Push:
    """How one token's send ended: ``kind`` (sent, gone, retry, failed), the history's
    detail, the provider's id (sent), its ``Retry-After`` (retry) or reason (failed)."""

    kind: str
    detail: str
    provider_id: str | None = None
    retry_after: float | None = None
    reason: str = ""


def push_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus ``TIDINGS_PUSH_CA_FILE``'s when it is set.

    Raises:
        ConfigurationError: the CA file cannot be read.
    """
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"TIDINGS_PUSH_CA_FILE={ca_file!r}: {exc}") from None
    return context


def short(token: str) -> str:
    """A token as the history shows it: enough to tell the user's tokens apart."""
    return f"…{token[-8:]}"


class PhoneChannel(Channel):
    """A channel whose addresses are the user's push tokens of one platform (its name)."""

    needs_address: ClassVar[bool] = False
    #: what the provider is called in messages
    provider: ClassVar[str]

    def __init__(self, store: Store) -> None:
        self.store = store

    async def push(self, outgoing: Outgoing, token: PushToken, badge: int) -> Push:
        """Send the delivery to one token."""
        raise NotImplementedError

    async def send(self, outgoing: Outgoing) -> Sent:
        tokens = await self.store.push_tokens(outgoing.user_id, self.name)
        if not tokens:
            raise PermanentFailure("no_address", f"the user has no {self.name} push token")
        badge = (await self.store.count(outgoing.user_id)).count
        return await self.settle(tokens, await self.push_all(outgoing, tokens, badge))

    async def push_all(self, outgoing: Outgoing, tokens: list[PushToken], badge: int) -> list[Push]:
        """The delivery to every token, a :class:`Push` each in order: one :meth:`push` per
        token, concurrently (a provider that takes many tokens in one request overrides it)."""
        return list(await asyncio.gather(*(self.push(outgoing, t, badge) for t in tokens)))

    async def gone(self, token: PushToken, detail: str) -> Push:
        """The provider says ``token`` will never work again: it leaves the registry."""
        await self.store.remove_push_token(self.name, token.token)
        return Push(GONE, detail)

    async def settle(self, tokens: list[PushToken], pushes: list[Push]) -> Sent:
        """The delivery's outcome from its tokens': sent if any token took it; else retried if
        any may take it later (no sooner than the longest ``Retry-After``); else ``gone``
        when every token was removed, or ``rejected`` with the provider's reasons.

        Raises:
            TransientFailure: no token took it, and one may later.
            PermanentFailure: no token took it, and none will.
        """
        notes = tuple((NOTES[p.kind], p.detail) for p in pushes)
        sent = [(t, p) for t, p in zip(tokens, pushes, strict=True) if p.kind == SENT]
        if sent:
            await self.store.touch_push_tokens([t.token_id for t, _ in sent])
            return Sent(",".join(str(p.provider_id) for _, p in sent), notes)
        retries = [p for p in pushes if p.kind == RETRY]
        if retries:
            hints = [p.retry_after for p in retries if p.retry_after is not None]
            raise TransientFailure(
                "provider_error",
                f"{self.provider} did not take it for {len(retries)} of {len(tokens)} tokens",
                max(hints) if hints else None,
                notes,
            )
        if all(p.kind == GONE for p in pushes):
            raise PermanentFailure(
                "gone", f"every {self.name} token of the user is gone (removed)", notes
            )
        reasons = sorted({p.reason for p in pushes if p.kind == FAILED})
        raise PermanentFailure(
            "rejected", f"{self.provider} refused it: {', '.join(reasons)}", notes
        )


def json_field(body: bytes, key: str) -> Any:
    """``body[key]`` of a JSON object body, or ``None``."""
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return found.get(key) if isinstance(found, dict) else None
