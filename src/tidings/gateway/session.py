"""A device's session, once its handshake is settled: bind the device and register the socket,
``welcome`` and the count, then frames in, each dispatched to the node and answered, until the
socket closes. Before that, :func:`await_authenticate` waits for the ``authenticate`` frame of
a device that brought no token to the handshake."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from starlette.websockets import WebSocketDisconnect

from tidings.auth.base import Principal
from tidings.core.codes import CloseCode
from tidings.core.models import Notification, StateChange, UnseenCount
from tidings.errors import (
    InvalidArgument,
    InvalidToken,
    IssuerUnavailable,
    NotFound,
    ProtocolError,
    StoreError,
    StoreUnavailable,
    TooManyConnections,
    TopicRefused,
)
from tidings.fanout import codec as protocol
from tidings.fanout.connection import Connection
from tidings.gateway.handshake import Handshake, Refusal, Scope, cookie_header
from tidings.gateway.messages import accept, close_frame, refuse, release_scope, send_text
from tidings.gateway.ports import GatewayNode, GatewaySettings

logger = logging.getLogger("tidings.gateway")

SHUTTING_DOWN = Refusal(503, "unavailable", "this node is shutting down; connect to another")
TOO_MANY_CONNECTIONS = Refusal(
    429,
    "too_many_connections",
    "this user has the most connections allowed; close another first",
)
STORE_UNAVAILABLE = Refusal(503, "unavailable", "storage unavailable, retry later")


class Closed(Exception):
    """The socket ended before the device was authenticated."""


def parse(settings: GatewaySettings, text: str | None) -> protocol.ClientFrame:
    """A client frame, checked against the node's limits.

    Raises:
        ProtocolError: binary, too large or invalid (answered with an ``error`` frame).
    """
    if text is None:
        raise ProtocolError(protocol.BINARY_FRAME, "frames must be UTF-8 JSON text")
    limit = settings.max_frame_size
    if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
        raise ProtocolError(
            protocol.FRAME_TOO_LARGE, f"frame is larger than the limit of {limit} bytes"
        )
    return protocol.parse_frame(text, max_unseen_page=settings.max_unseen_page)


async def await_authenticate(
    node: GatewayNode, receive: Any, send: Any
) -> tuple[Principal, protocol.Authenticate]:
    """Wait for a valid ``authenticate`` frame; closes the socket and raises :class:`Closed`
    if none comes within ``auth_timeout`` or its token is refused."""
    settings = node.settings
    try:
        async with asyncio.timeout(settings.auth_timeout):
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    raise Closed
                try:
                    frame = parse(settings, message.get("text"))
                except ProtocolError as exc:
                    await send(send_text(protocol.error(exc.frame_id, exc.code, exc.message)))
                    continue
                if not isinstance(frame, protocol.Authenticate):
                    await send(
                        send_text(
                            protocol.error(
                                frame.id, protocol.NOT_AUTHENTICATED, "send 'authenticate' first"
                            )
                        )
                    )
                    continue
                try:
                    principal = await node.authenticator.authenticate(frame.token)
                except IssuerUnavailable:
                    await close_frame(send, CloseCode.TRY_AGAIN_LATER, "token issuer unavailable")
                    raise Closed from None
                except InvalidToken as exc:
                    await close_frame(send, CloseCode.UNAUTHORIZED, str(exc)[:120])
                    raise Closed from None
                return principal, frame
    except TimeoutError:
        await close_frame(send, CloseCode.AUTH_TIMEOUT, "authentication timeout")
        raise Closed from None


def set_cookie(
    node: GatewayNode, scope: Scope, cid: str, presented: str | None
) -> list[tuple[bytes, bytes]]:
    """The ``Set-Cookie`` header (list) that gives the browser device id ``cid``."""
    settings = node.settings
    return cookie_header(
        scope,
        cid,
        presented,
        secure=settings.cookie_secure,
        samesite=settings.cookie_samesite,
        max_age=settings.cookie_max_age,
    )


async def run_session(
    node: GatewayNode, handshake: Handshake | None, receive: Any, send: Any
) -> None:
    """Bind the device and register the socket (one store write), answer the handshake if it
    is pending, send ``welcome`` and the count, rejoin the session's topics, start the
    device's queue in deliver mode, then serve the socket's frames until it closes. Nothing
    when the handshake was refused (None).

    This frame holds the only reference to ``handshake`` (pass it straight on) and lets it go
    once the device is bound: an idle socket keeps neither its principal nor its scope."""
    if handshake is None:
        return
    principal = handshake.principal
    # Its ids are set once the device is bound; until then it is not open, so events for it
    # queue behind the welcome.
    conn = Connection(
        send,
        connection_id="",
        user_id=principal.user_id,
        session_id="",
        max_queue=node.settings.outbound_queue_size,
        claims=principal.claims,
        counters=node.counters,
    )
    del principal
    opened = False
    registered = False  # the socket may be in the store's registry
    try:
        # Subscribe first, then read: a change committed in between reaches the device as an
        # event, and the version filter drops whichever of the two is older.
        await node.registry.add(conn)
        pending = handshake.pending
        if not node.started:  # the node began shutting down during the handshake
            await refuse(send, pending, SHUTTING_DOWN, CloseCode.GOING_AWAY)
            return
        registered = True
        count: UnseenCount | None
        deliver = handshake.deliver
        # In deliver mode the opening reads the queue's first page too, when it may.
        page = node.queue_page_on_open if deliver else 0
        first: list[Notification] | None = None
        try:
            device, count, topics, first = await node.store.open_socket(
                conn.user_id,
                handshake.presented,
                socket_id=conn.socket_id,
                session_id=handshake.session_id,
                node_id=node.node_id,
                connected_since=conn.connected_since,
                max_sockets=node.settings.max_connections_per_user,
                queue=page,
            )
        except TooManyConnections as exc:
            node.counters.count_error("too_many_connections")
            registered = False
            if exc.device is None:  # a store that did not bind: refuse outright
                await refuse(send, pending, TOO_MANY_CONNECTIONS, CloseCode.TOO_MANY_CONNECTIONS)
                return
            device, count, topics = exc.device, None, []
        except StoreError as exc:
            logger.warning("refusing device of %s: store unavailable: %s", conn.user_id, exc)
            await refuse(send, pending, STORE_UNAVAILABLE, CloseCode.TRY_AGAIN_LATER)
            return
        conn.connection_id = device.connection_id
        conn.session_id = handshake.session_id or device.connection_id
        if pending is not None:
            await accept(
                send, set_cookie(node, pending, device.connection_id, handshake.cookie_cid)
            )
        del handshake, pending, device
        release_scope(send)
        node.counters.connections_opened += 1
        # Open first: the welcome is then written in place, not by a writer task. From now
        # on a close by the node sends its close frame at once (the connection does), and the
        # server answers the pending receive() with a disconnect.
        opened = True
        conn.open(
            protocol.welcome(
                connection_id=conn.connection_id,
                session_id=conn.session_id,
                user_id=conn.user_id,
                node=node.node_id,
            )
        )
        if count is None:
            conn.close(CloseCode.TOO_MANY_CONNECTIONS, TOO_MANY_CONNECTIONS.message)
            return
        conn.push_count(count.count, count.version, protocol.counts_frame(count))
        if count.version < conn.erased_below:  # opened before its user was erased
            conn.close(CloseCode.NORMAL, "user erased")
            return
        version = count.version
        del count
        await node.reactivate_session(conn, topics)
        del topics
        if deliver:
            await node.open_queue(conn, first if page else None, version)
        del first
        if not conn.closed:
            try:
                await read_frames(node, conn, receive)
            except (OSError, WebSocketDisconnect):
                pass  # the client is gone
            except Exception:
                logger.exception(
                    "connection %s failed", conn.connection_id, extra=conn.log_fields()
                )
                conn.close(CloseCode.INTERNAL_ERROR, "internal error")
    finally:
        node.registry.remove(conn)
        conn.abort()  # the client went away (if nothing closed it before)
        if opened:  # a flushing close sends its queue, then the close frame
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(4.5):
                    await conn.finished()
        if registered:
            await asyncio.shield(node.forget_presence(conn))


async def read_frames(node: GatewayNode, conn: Connection, receive: Any) -> None:
    """Frames in until the socket closes, each parsed and dispatched; over
    ``max_frames_per_second`` they are refused, and a client that ignores the refusals is
    closed (1008)."""
    counters = node.counters
    # A token bucket per connection (locals: nothing is kept for idle connections).
    rate = node.settings.max_frames_per_second
    tokens, refilled, refused = 2 * rate, time.monotonic(), 0
    while not conn.closed:
        # Stop reading while this client's answers pile up: TCP then slows the client.
        await conn.wait_writable()
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message["type"] != "websocket.receive":
            continue
        counters.frames_in += 1
        now = time.monotonic()
        tokens = min(2 * rate, tokens + (now - refilled) * rate)
        refilled = now
        if tokens < 1:
            refused += 1
            counters.count_error(protocol.RATE_LIMITED)
            if refused == 1:
                logger.warning(
                    "device sends over %g frames per second; refusing",
                    rate,
                    extra=conn.log_fields(),
                )
            if refused > 10 * rate:  # it ignores the refusals: stop reading it at all
                conn.close(CloseCode.POLICY_VIOLATION, "too many frames")
                return
            conn.push(
                protocol.error(None, protocol.RATE_LIMITED, f"over {rate:g} frames per second")
            )
            continue
        tokens -= 1
        refused = 0
        try:
            frame = parse(node.settings, message.get("text"))
        except ProtocolError as exc:
            counters.count_error(exc.code)
            conn.push(protocol.error(exc.frame_id, exc.code, exc.message))
            continue
        await dispatch(node, conn, frame)


async def dispatch(node: GatewayNode, conn: Connection, frame: protocol.ClientFrame) -> None:
    """Do what ``frame`` asks and answer it; a failure is answered with an ``error`` frame
    and the connection stays up."""
    try:
        await _answer(node, conn, frame)
    except NotFound as exc:
        conn.push(
            protocol.error(
                frame.id,
                protocol.NOT_FOUND,
                "unknown notification ids; nothing was marked",
                notification_ids=exc.ids,
            )
        )
    except TopicRefused as exc:
        conn.push(
            protocol.error(
                frame.id,
                protocol.FORBIDDEN_TOPIC,
                f"not allowed: {', '.join(exc.topics)}; nothing was changed",
                topics=exc.topics,
            )
        )
    except StoreUnavailable:
        node.counters.count_error("store_unavailable")
        conn.push(protocol.error(frame.id, protocol.UNAVAILABLE, "storage unavailable, retry"))
    except InvalidArgument as exc:
        node.counters.count_error(protocol.INVALID_FRAME)
        conn.push(protocol.error(frame.id, protocol.INVALID_FRAME, str(exc)))
    except Exception:
        node.counters.count_error("internal")
        logger.exception(
            "frame %s of %s failed",
            type(frame).__name__,
            conn.connection_id,
            extra=conn.log_fields(),
        )
        conn.push(protocol.error(frame.id, protocol.INTERNAL, "internal error"))


async def _answer(node: GatewayNode, conn: Connection, frame: protocol.ClientFrame) -> None:
    if isinstance(frame, protocol.GetUnseen):
        notes = await node.unseen(conn.user_id, frame.limit)
        budget = node.settings.max_unseen_bytes
        conn.push(protocol.notification_data(frame.id, notes, max_bytes=budget))
    elif isinstance(frame, protocol.MarkSeen):
        result = await node.mark_seen(conn.user_id, frame.notification_ids)
        conn.push(protocol.reply(frame.id, marked=len(result.marked)))
    elif isinstance(frame, protocol.MarkAllSeen):
        result = await node.mark_all_seen(conn.user_id)
        conn.push(protocol.reply(frame.id, marked=len(result.marked)))
    elif isinstance(frame, protocol.ChangeState):
        change = cast(StateChange, frame.change)
        result = await node.change_state(conn.user_id, change, frame.notification_ids)
        conn.push(protocol.reply(frame.id, marked=len(result.marked)))
    elif isinstance(frame, protocol.Ack):
        if not conn.deliver:
            conn.push(
                protocol.error(
                    frame.id,
                    protocol.NOT_DELIVER_MODE,
                    "ack needs deliver mode (query deliver=1 or authenticate deliver)",
                )
            )
            return
        acked = await node.ack(conn.user_id, conn.connection_id, frame.notification_ids)
        conn.push(protocol.reply(frame.id, acked=len(acked.acked)))
    elif isinstance(frame, protocol.Subscribe):
        topics = await node.subscribe_topics(conn, frame.topics)
        conn.push(protocol.reply(frame.id, topics=topics))
    elif isinstance(frame, protocol.Unsubscribe):
        topics = await node.unsubscribe_topics(conn, frame.topics)
        conn.push(protocol.reply(frame.id, topics=topics))
    elif isinstance(frame, protocol.ReadNotifications):
        outcome = await node.replay(conn, frame.topic, frame.since)
        conn.push(
            protocol.reply(
                frame.id,
                topic=frame.topic,
                recovered=outcome.recovered,
                last_seq=outcome.last_seq,
            )
        )
    elif isinstance(frame, protocol.GetNotifications):
        notes, next_cursor = await node.notifications(
            conn.user_id,
            state=frame.state,
            category=frame.category,
            cursor=frame.cursor,
            limit=frame.limit,
        )
        conn.push(
            protocol.reply(
                frame.id, notifications=[n.to_dict() for n in notes], next_cursor=next_cursor
            )
        )
    elif isinstance(frame, protocol.ForgetDevice):
        await node.forget_device(
            conn.user_id,
            conn.connection_id,
            before_close=protocol.reply(frame.id, forgotten=conn.connection_id),
        )
    else:
        conn.push(
            protocol.error(
                frame.id, protocol.ALREADY_AUTHENTICATED, "this connection is authenticated"
            )
        )
