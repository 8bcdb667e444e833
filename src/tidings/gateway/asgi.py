"""The device endpoint: raw ASGI WebSocket (no framework wrapper on the hot path).

Lifecycle of one connection:

1. Handshake (:mod:`tidings.gateway.handshake`): a token in ``Authorization: Bearer`` or
   ``?access_token=`` is verified before accepting (HTTP 401 if bad). Without one the socket
   is accepted and must send ``authenticate`` within ``auth_timeout`` seconds (else close
   4408; bad token 4401).
2. The device id (``tidings_cid`` cookie, or ``?connection_id=``) is bound to the user and the
   socket registered, in one store write (after the node subscribed to the user's events);
   the handshake is answered then, its cookie set when the device had none (or a foreign one).
3. ``welcome``, then the current count; from then on every count change of the user.
4. Frames are parsed by :mod:`tidings.fanout.codec`; each bad one is answered with an
   ``error`` frame and the connection stays up (:mod:`tidings.gateway.session`).

The node is seen only through :class:`~tidings.gateway.ports.GatewayNode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from tidings.auth.base import Principal
from tidings.core.codes import CloseCode
from tidings.core.ids import CONNECTION_ID, new_id
from tidings.errors import DelegateUnavailable, InvalidToken, IssuerUnavailable
from tidings.gateway.handshake import (
    COOKIE_NAME,
    FORBIDDEN_ORIGIN,
    Handshake,
    HandshakeRequest,
    Refusal,
    Scope,
    embedded_handshake,
    origin_allowed,
    read_handshake,
    read_headers,
)
from tidings.gateway.messages import Message, accept, close_frame, deny, plain_response
from tidings.gateway.ports import GatewayNode
from tidings.gateway.session import Closed, await_authenticate, run_session, set_cookie

__all__ = ["COOKIE_NAME", "Gateway", "Message", "Scope"]

logger = logging.getLogger("tidings.gateway")

NOT_STARTED = Refusal(503, "unavailable", "tidings is not started")
AUTH_UNAVAILABLE = Refusal(503, "unavailable", "authentication unavailable, retry")


class Gateway:
    """ASGI application serving device WebSockets for one node."""

    def __init__(self, tidings: GatewayNode) -> None:
        self.tidings = tidings
        self._active = 0
        # Token bucket of new connections (connection-flood protection).
        self._tokens = tidings.settings.max_connects_per_second
        self._refilled = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_closed(self, timeout: float) -> None:
        """Wait until every connection handler has returned (or ``timeout`` passed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(self.tidings, receive, send)
            return
        if scope["type"] != "websocket":
            await plain_response(send, 426, b"this endpoint speaks WebSocket only\n")
            return
        refusal = self._admission()
        if refusal is not None:
            if (await receive())["type"] == "websocket.connect":
                await deny(scope, send, Refusal(503, "overloaded", refusal))
            return
        self._active += 1
        self._idle.clear()
        try:
            # Passed straight on: no frame of the idle connection keeps the handshake.
            await run_session(self.tidings, await self._serve(scope, receive, send), receive, send)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    def _admission(self) -> str | None:
        """Why a new socket must be refused now (caps of this node), or None."""
        settings = self.tidings.settings
        if self.tidings.draining:
            return "this node is shutting down; connect to another"
        if self._active >= settings.max_connections:
            return f"this node holds its maximum of {settings.max_connections} connections"
        now = time.monotonic()
        rate = settings.max_connects_per_second
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1:
            return "too many new connections per second; retry shortly"
        self._tokens -= 1
        return None

    async def adopt(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        *,
        principal: Principal,
        session_id: str | None = None,
        deliver: bool = False,
        accept: bool = True,
        check_origin: bool = True,
    ) -> None:
        """Serve a socket whose user the host application has already authenticated
        (embedded mode); ``accept`` when the handshake is still to be answered. Applications
        authenticate with cookies, so a foreign ``Origin`` is refused unless ``check_origin``
        is off (see :func:`~tidings.gateway.handshake.origin_allowed`)."""
        if accept and (await receive())["type"] != "websocket.connect":
            return
        allowed = self.tidings.settings.allowed_origins
        if check_origin and not origin_allowed(scope, read_headers(scope), allowed, cookies=True):
            if accept:
                await deny(scope, send, FORBIDDEN_ORIGIN)
            else:
                await close_frame(send, CloseCode.FORBIDDEN, "forbidden origin")
            return
        self._active += 1
        self._idle.clear()
        try:
            await run_session(
                self.tidings,
                embedded_handshake(
                    scope, principal, session_id=session_id, deliver=deliver, pending=accept
                ),
                receive,
                send,
            )
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _serve(self, scope: Scope, receive: Any, send: Any) -> Handshake | None:
        """The handshake and authentication: who the device is, or None if it was refused.

        Returning (rather than going on to serve the device from here) lets this frame, with
        the decoded headers, the token and the query, go: an idle device keeps none of it."""
        if (await receive())["type"] != "websocket.connect":
            return None
        tidings = self.tidings
        if not tidings.started:
            await deny(scope, send, NOT_STARTED)
            return None
        request = read_handshake(
            scope,
            delegation=tidings.delegate is not None,
            allowed_origins=tidings.settings.allowed_origins,
        )
        if isinstance(request, Refusal):
            await deny(scope, send, request)
            return None
        if request.token is None and not request.delegated:
            return await self._authenticate_on_socket(scope, receive, send, request)
        found = await self._authenticate(scope, send, request)
        if found is None:
            return None
        principal, app_session = found
        # The request's headers are not read again: release them for as long as the socket
        # stays open (about a kilobyte per idle connection).
        scope["headers"] = []
        return Handshake(
            principal,
            request.presented,
            request.session_id or app_session,
            request.deliver,
            # Answered once the device is bound: the Set-Cookie carries its id.
            pending=scope,
            cookie_cid=request.cookie_cid,
        )

    async def _authenticate_on_socket(
        self, scope: Scope, receive: Any, send: Any, request: HandshakeRequest
    ) -> Handshake | None:
        """Accept a device that brought no credentials, then wait for its ``authenticate``
        frame; None when it did not come or was refused (the socket is closed)."""
        # Before authentication only an id we issue (or the cookie the browser already has)
        # goes into Set-Cookie: a page cannot plant an id of its choosing in a browser.
        asked = request.presented
        explicit = asked if asked and CONNECTION_ID.match(asked) else None
        provisional = explicit or new_id()
        from_query = explicit is not None and request.cookie_cid is None
        cookies = (
            [] if from_query else set_cookie(self.tidings, scope, provisional, request.cookie_cid)
        )
        await accept(send, cookies)
        try:
            principal, frame = await await_authenticate(self.tidings, receive, send)
        except Closed:
            return None
        scope["headers"] = []
        return Handshake(
            principal,
            provisional,
            frame.session_id or request.session_id,
            request.deliver or frame.deliver,
            pending=None,
            cookie_cid=request.cookie_cid,
        )

    async def _authenticate(
        self, scope: Scope, send: Any, request: HandshakeRequest
    ) -> tuple[Principal, str | None] | None:
        """The device's user by the handshake's token, or by the application in delegated
        mode (with the session it may name); None when refused (the handshake is answered)."""
        delegate = self.tidings.delegate
        try:
            if request.delegated and delegate is not None:
                return await delegate.authenticate_request(request.headers)
            if request.token is not None:
                return await self.tidings.authenticator.authenticate(request.token), None
        except (DelegateUnavailable, IssuerUnavailable) as exc:
            logger.warning("refusing device: %s", exc)
            await deny(scope, send, AUTH_UNAVAILABLE)
            return None
        except InvalidToken as exc:
            await deny(scope, send, Refusal(401, "invalid_token", str(exc)))
            return None
        await deny(scope, send, Refusal(401, "invalid_token", "no credentials"))
        return None


async def _lifespan(tidings: GatewayNode, receive: Any, send: Any) -> None:
    """Start and close ``tidings`` when the gateway is served on its own."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await tidings.start()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await tidings.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
