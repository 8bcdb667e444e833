"""The node's side of Server-Sent Events (:mod:`tidings.gateway.sse`): the streams it holds,
and the frames a device POSTs for its stream, served here or handed over the bus to the node
that holds it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tidings.core import events
from tidings.errors import (
    BusError,
    DelegateUnavailable,
    InvalidToken,
    IssuerUnavailable,
    StoreError,
)
from tidings.fanout.registry import user_channel
from tidings.gateway.handshake import bearer, for_the_application
from tidings.gateway.sse import Streams, read_frames_body

if TYPE_CHECKING:
    from tidings.auth.base import DeviceAuthenticator, Principal
    from tidings.auth.delegated import DelegatedAuthenticator
    from tidings.bus import Bus
    from tidings.storage import Store

logger = logging.getLogger("tidings")

#: an answer: status and JSON body
Answer = tuple[int, dict[str, Any]]


class SseDoor:
    """Mixed into :class:`~tidings.node.tidings.Tidings`, which sets what is declared here."""

    sse_streams: Streams
    store: Store
    bus: Bus
    node_id: str
    delegate: DelegatedAuthenticator | None

    @property
    def authenticator(self) -> DeviceAuthenticator:
        raise NotImplementedError

    async def post_sse_frames(self, headers: Mapping[str, str], body: bytes) -> Answer:
        """``POST /sse/frames``: the caller's frames for their own stream, wherever it is."""
        who = await self._sse_caller(headers)
        if isinstance(who, tuple):
            return who
        read = read_frames_body(body)
        if isinstance(read, str):
            return 422, {"error": "invalid_request", "message": read}
        connection_id, frames = read
        user_id = who.user_id
        taken = self.sse_streams.offer(user_id, connection_id, frames)
        if taken is False:
            return 429, {"error": "too_many_frames", "message": "wait for the answers first"}
        if taken is None:
            try:
                held = await self.store.presence(user_id=user_id)
            except StoreError:
                return 503, {"error": "unavailable", "message": "storage unavailable, retry"}
            if not any(p.connection_id == connection_id for p in held):
                return 404, {"error": "not_found", "message": "no stream of yours has this id"}
            try:
                await self.bus.publish(
                    user_channel(user_id),
                    events.encode_sse_frames(user_id, connection_id, frames, self.node_id),
                )
            except BusError:
                return 503, {"error": "unavailable", "message": "bus unavailable, retry"}
        return 202, {"accepted": len(frames)}

    def on_sse_frames(self, event: dict[str, Any]) -> None:
        """Frames another node took for a stream, from the bus: served if it is here."""
        decoded = events.decode_sse_frames(event)
        if decoded is not None and decoded[3] != self.node_id:
            user_id, connection_id, frames, _ = decoded
            if self.sse_streams.offer(user_id, connection_id, frames) is False:
                logger.warning("frames for stream %s dropped: too many waiting", connection_id)

    async def _sse_caller(self, headers: Mapping[str, str]) -> Principal | Answer:
        """Who posts: by their device token, or by the application in delegated mode."""
        token = bearer(headers.get("authorization"))
        delegate = self.delegate
        try:
            if delegate is not None and for_the_application(headers, token, delegation=True):
                return (await delegate.authenticate_request(headers))[0]
            if token is not None:
                return await self.authenticator.authenticate(token)
        except (DelegateUnavailable, IssuerUnavailable):
            return 503, {"error": "unavailable", "message": "authentication unavailable, retry"}
        except InvalidToken as exc:
            return 401, {"error": "invalid_token", "message": str(exc)}
        return 401, {"error": "invalid_token", "message": "no credentials"}
