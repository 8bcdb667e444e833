"""The Expo channel: a delivery to every device of the user whose app is built with Expo,
through the Expo push service (which forwards to APNs and FCM).

All the user's ``expo`` tokens go in one request to ``/--/api/v2/push/send`` (at most 100, the
registry's cap per user too). Expo answers a ticket per token at once; whether the phone's
provider took the push is known later, from its receipt: the channel asks for receipts
``TIDINGS_EXPO_RECEIPT_DELAY`` seconds after a send (Expo keeps them a day) and removes the
tokens whose receipt says ``DeviceNotRegistered``. Receipts still to check are kept in the store
(``push_receipts``): a restart loses none, and any node with the channel checks them, each
receipt leased to one node while it asks.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import orjson

from tidings.core.models import PushReceipt, PushToken, utcnow
from tidings.delivery.channels._net import retry_after
from tidings.delivery.channels.base import Outgoing
from tidings.delivery.channels.phones import (
    FAILED,
    RETRY,
    SENT,
    PhoneChannel,
    Push,
    json_field,
    push_ssl_context,
    short,
)
from tidings.errors import TidingsError

if TYPE_CHECKING:
    from tidings.delivery.ports import ChannelSettings, PipelineHost
    from tidings.storage import Store

logger = logging.getLogger("tidings.pipeline")

#: ticket and receipt errors that mean the token will never work again
GONE = frozenset({"DeviceNotRegistered"})
#: ticket errors worth another try
TRANSIENT = frozenset({"MessageRateExceeded"})
#: receipt ids one getReceipts request may ask for
RECEIPTS_PER_REQUEST = 1000
#: seconds Expo keeps a receipt
RECEIPTS_KEPT = 24 * 3600
#: seconds a node holds the receipts it asks for; one not ready yet is asked again after it
RECEIPT_LEASE = 60.0


class ExpoChannel(PhoneChannel):
    """Sends a delivery to the user's ``expo`` push tokens, and checks their receipts later."""

    name: ClassVar[str] = "expo"
    provider: ClassVar[str] = "Expo"

    def __init__(
        self,
        store: Store,
        *,
        url: str = "https://exp.host",
        access_token: str | None = None,
        receipt_delay: float = 900.0,
        timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        super().__init__(store)
        self.url = url.rstrip("/")
        self.access_token = access_token
        self.receipt_delay = receipt_delay
        self.timeout = timeout
        self.ssl = push_ssl_context(ca_file)
        self._client: httpx.AsyncClient | None = None
        self._checker: asyncio.Task[None] | None = None

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> ExpoChannel:
        settings: ChannelSettings = host.settings
        return cls(
            host.store,
            url=settings.expo_url,
            access_token=settings.expo_access_token,
            receipt_delay=settings.expo_receipt_delay,
            timeout=settings.provider_timeout,
            ca_file=settings.push_ca_file,
        )

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=self.ssl, timeout=self.timeout)
            self._checker = asyncio.ensure_future(self._check_receipts())

    async def close(self) -> None:
        await super().close()
        checker, self._checker = self._checker, None
        if checker is not None:
            checker.cancel()
            await asyncio.gather(checker, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.access_token:
            headers["authorization"] = f"Bearer {self.access_token}"
        return headers

    async def push_all(self, outgoing: Outgoing, tokens: list[PushToken], badge: int) -> list[Push]:
        """Every token of the user in one request (Expo takes up to 100, the registry's cap)."""
        rendered = outgoing.rendered
        messages = [
            {
                "to": token.token,
                "title": rendered.subject or "",
                "body": rendered.text,
                "data": {
                    "message_id": outgoing.message_id,
                    "delivery_id": outgoing.delivery_id,
                    "data": rendered.data,
                },
                "badge": badge,
                "sound": "default",
            }
            for token in tokens
        ]
        return await self._send(tokens, messages)

    async def send_badge(self, user_id: str, badge: int) -> None:
        """A silent badge update to every Expo token of the user (no alert, no sound)."""
        tokens = await self.badge_tokens(user_id)
        if tokens:
            messages = [{"to": t.token, "badge": badge, "_contentAvailable": True} for t in tokens]
            await self._send(tokens, messages)

    async def _send(self, tokens: list[PushToken], messages: list[dict[str, Any]]) -> list[Push]:
        """One request with every message; a :class:`Push` per token from its ticket."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        try:
            response = await self._client.post(
                f"{self.url}/--/api/v2/push/send",
                content=orjson.dumps(messages),
                headers=self._headers(),
            )
        except httpx.HTTPError as exc:
            return [Push(RETRY, f"{short(t.token)}: {type(exc).__name__}: {exc}") for t in tokens]
        if response.status_code != 200:
            detail = f"{response.status_code} {response.text[:200]}"
            if response.status_code == 429 or response.status_code >= 500:
                hint = retry_after(response)
                return [
                    Push(RETRY, f"{short(t.token)}: {detail}", retry_after=hint) for t in tokens
                ]
            return [
                Push(FAILED, f"{short(t.token)}: {detail}", reason=str(response.status_code))
                for t in tokens
            ]
        tickets = json_field(response.content, "data")
        if not isinstance(tickets, list) or len(tickets) != len(tokens):
            return [Push(RETRY, f"{short(t.token)}: unexpected answer") for t in tokens]
        pushes = [await self._ticket(t, ticket) for t, ticket in zip(tokens, tickets, strict=True)]
        await self._keep_receipts(tokens, pushes)
        return pushes

    async def _keep_receipts(self, tokens: list[PushToken], pushes: list[Push]) -> None:
        """Keep the tickets' receipt ids, to ask for after ``receipt_delay``."""
        now = utcnow()
        kept = now + timedelta(seconds=RECEIPTS_KEPT)
        receipts = [
            PushReceipt(push.provider_id, token.user_id, token.token, kept)
            for token, push in zip(tokens, pushes, strict=True)
            if push.kind == SENT and push.provider_id
        ]
        try:
            await self.store.add_push_receipts(
                self.name, receipts, now + timedelta(seconds=self.receipt_delay)
            )
        except TidingsError as exc:  # the pushes went; only the later check of these is lost
            logger.warning("Expo receipts not kept: %s", exc)

    async def _ticket(self, token: PushToken, ticket: Any) -> Push:
        """One token's outcome from its push ticket."""
        if not isinstance(ticket, dict):
            return Push(RETRY, f"{short(token.token)}: unexpected ticket")
        if ticket.get("status") == "ok":
            receipt = str(ticket.get("id", ""))
            return Push(
                SENT, f"{short(token.token)}: ticket {receipt}", provider_id=receipt or None
            )
        error = str((ticket.get("details") or {}).get("error", "")) or "error"
        detail = f"{short(token.token)}: {error}: {ticket.get('message', '')}".rstrip(": ")
        if error in GONE:
            return await self.gone(token, detail)
        if error in TRANSIENT:
            return Push(RETRY, detail)
        return Push(FAILED, detail, reason=error)

    async def _check_receipts(self) -> None:
        """Every so often, ask for the receipts that are due; remove the tokens they call
        gone."""
        period = max(min(self.receipt_delay / 2, 60.0), 0.05)
        while True:
            await asyncio.sleep(period)
            try:
                await self.check_receipts()
            except Exception as exc:  # checked again next time
                logger.warning("Expo receipts not checked: %s", exc)

    async def check_receipts(self) -> int:
        """Ask for the receipts that are due; returns how many tokens were removed."""
        removed = 0
        while True:
            due = await self.store.due_push_receipts(self.name, RECEIPTS_PER_REQUEST, RECEIPT_LEASE)
            if not due:
                return removed
            assert self._client is not None
            response = await self._client.post(
                f"{self.url}/--/api/v2/push/getReceipts",
                content=orjson.dumps({"ids": [r.receipt_id for r in due]}),
                headers=self._headers(),
            )
            if response.status_code != 200:
                return removed  # asked again once their lease ends
            answered = json_field(response.content, "data")
            now = utcnow()
            done: list[str] = []
            for kept in due:
                receipt = answered.get(kept.receipt_id) if isinstance(answered, dict) else None
                if receipt is None:  # not ready yet: asked again after the lease, for a day
                    if now > kept.keep_until:
                        done.append(kept.receipt_id)
                    continue
                done.append(kept.receipt_id)
                error = str((receipt.get("details") or {}).get("error", ""))
                gone = receipt.get("status") == "error" and error in GONE
                if gone and await self.store.remove_push_token(self.name, kept.token):
                    removed += 1
            await self.store.drop_push_receipts(done)
            if len(due) < RECEIPTS_PER_REQUEST:
                return removed
