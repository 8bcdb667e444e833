"""What the phone channels (``apns``, ``fcm``) share: a delivery goes to every push token the
user registered on the channel's platform, each token's outcome is a note in the delivery's
history, and the tokens the provider calls gone leave the registry.

A subclass sends to one token (:meth:`PhoneChannel.push`) and answers with a :class:`Push`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from tidings.core.batching import Batcher
from tidings.core.models import PushToken
from tidings.delivery.channels.base import Channel, Outgoing, Sent
from tidings.errors import ConfigurationError, PermanentFailure, TransientFailure

if TYPE_CHECKING:
    from tidings.storage import Store

logger = logging.getLogger("tidings.delivery")

SENT, GONE, RETRY, FAILED = "sent", "gone", "retry", "failed"
#: at most this many users' sends share one read (or one write of their tokens' last use)
BATCH = 500
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
        # The sends under way share their reads and writes: each batch of users' tokens and
        # counts is one read, each batch of used tokens one write.
        self._targets: Batcher[str] = Batcher(self._read_targets, max_batch=BATCH)
        self._uses: Batcher[list[str]] = Batcher(self._write_uses, max_batch=BATCH)
        # Badge updates follow every count change: their token reads go together too, so a
        # node notifying 1,000 users a second makes a few reads, not 1,000 (most users have
        # no phone of this platform, and the read is all a badge update costs them).
        self._badge_targets: Batcher[str] = Batcher(self._read_badge_targets, max_batch=BATCH)
        self._using: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Wait for the last uses of tokens to be written."""
        if self._using:
            await asyncio.wait(list(self._using))

    async def _read_targets(self, user_ids: list[str]) -> list[tuple[list[PushToken], int]]:
        wanted = list(dict.fromkeys(user_ids))
        tokens, counts = await asyncio.gather(
            self.store.push_tokens_of(wanted, self.name), self.store.counts(wanted)
        )
        return [(tokens[user_id], counts[user_id].count) for user_id in user_ids]

    async def _read_badge_targets(self, user_ids: list[str]) -> list[list[PushToken]]:
        tokens = await self.store.push_tokens_of(list(dict.fromkeys(user_ids)), self.name)
        return [tokens[user_id] for user_id in user_ids]

    async def badge_tokens(self, user_id: str) -> list[PushToken]:
        """The user's tokens of this platform, for a badge update (read with others')."""
        tokens: list[PushToken] = await self._badge_targets.submit(user_id)
        return tokens

    async def _write_uses(self, batches: list[list[str]]) -> list[None]:
        await self.store.touch_push_tokens([token_id for ids in batches for token_id in ids])
        return [None] * len(batches)

    async def push(self, outgoing: Outgoing, token: PushToken, badge: int) -> Push:
        """Send the delivery to one token."""
        raise NotImplementedError

    async def send(self, outgoing: Outgoing) -> Sent:
        tokens, badge = await self._targets.submit(outgoing.user_id)
        if not tokens:
            raise PermanentFailure("no_address", f"the user has no {self.name} push token")
        return await self.settle(tokens, await self.push_all(outgoing, tokens, badge))

    async def push_all(self, outgoing: Outgoing, tokens: list[PushToken], badge: int) -> list[Push]:
        """The delivery to every token, a :class:`Push` each in order: one :meth:`push` per
        token, concurrently (a provider that takes many tokens in one request overrides it)."""
        return list(await asyncio.gather(*(self.push(outgoing, t, badge) for t in tokens)))

    def _record_use(self, token_ids: list[str]) -> None:
        """Record the tokens' last use in the background: a send does not wait for it (it
        goes with the next sends' in one write)."""
        task = asyncio.create_task(self._uses.submit(token_ids))
        self._using.add(task)
        task.add_done_callback(self._used)

    def _used(self, task: asyncio.Task[None]) -> None:
        self._using.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:  # the pushes went all the same: only the last-use time is lost
            logger.warning("recording the use of %s push tokens failed: %s", self.name, error)

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
            self._record_use([t.token_id for t, _ in sent])
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
