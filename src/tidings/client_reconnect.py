"""The connection under :class:`tidings.client.DeviceClient`, and how it reconnects.

:class:`DeviceConnection` opens the socket (a token, cookies or extra headers on the
handshake), reads the frames and answers requests. With ``reconnect=True`` it comes back by
itself as ``tidings.js`` does (docs/browser.md): jittered exponential backoff (500 ms doubling
up to 30 s), a fresh token from ``get_token`` on every attempt, the same ``connection_id`` and
``session_id`` (so the server resumes the device's queue and the session's topics), each topic
replayed from the last seq seen, and no more attempts after :meth:`~DeviceConnection.close` or
an answer that another attempt cannot change (docs/protocol.md, "Close codes").

Beside the server's frames the reader gets events of the client's own: ``disconnected`` (lost,
reconnecting), ``reconnected``, ``stopped`` (no more attempts) and ``error`` (``token``,
``replay_incomplete``, ``replay_failed``); docs/python-client.md describes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from tidings.errors import ClientError

AuthMode = Literal["header", "query", "frame"]
Verdict = Literal["retry", "unauthorized", "stop"]
TokenSource = Callable[[], Awaitable[str]]

#: close codes after which another attempt cannot help: a normal closure (the device logged
#: out, the user erased), a client that broke RFC 6455, a refused Origin, the user's socket cap
FINAL_CLOSE_CODES = frozenset({1000, 1002, 1003, 1007, 1009, 1010, 4403, 4429})
#: handshake answers after which another attempt cannot help (a malformed request, a refused
#: Origin, no WebSocket endpoint at that URL)
FINAL_STATUSES = frozenset({400, 403, 404, 405, 426})
#: the credentials were refused: HTTP 401 at the handshake, close 4401 after ``authenticate``
UNAUTHORIZED = frozenset({401, 4401})
#: a ``since`` beyond every seq: ``readNotifications`` then only says where the topic stands
TOPIC_END = 2**53 - 1


def backoff(attempt: int, base: float, ceiling: float) -> float:
    """The delay before reconnection attempt ``attempt`` (0 first): ``base`` doubling up to
    ``ceiling``, times a random factor from 0.5 to 1 so that devices do not come back in step."""
    return float(min(ceiling, base * 2.0 ** min(attempt, 32)) * (0.5 + random.random() / 2))


def verdict(code: int | None = None, status: int | None = None) -> Verdict:
    """What to do after a connection closed with ``code``, or a handshake got ``status``."""
    if code in UNAUTHORIZED or status in UNAUTHORIZED:
        return "unauthorized"
    if code in FINAL_CLOSE_CODES or status in FINAL_STATUSES:
        return "stop"
    return "retry"


def handshake(
    url: str,
    *,
    token: str | None,
    auth: AuthMode,
    session_id: str | None,
    connection_id: str | None,
    deliver: bool,
    cookies: Mapping[str, str],
    headers: Mapping[str, str],
) -> tuple[str, dict[str, str]]:
    """The URL and headers of a handshake. The device id travels as ``?connection_id=`` (as
    the ``tidings_cid`` cookie it would send a JWT device to a node's delegate); the caller's
    ``cookies`` join any ``Cookie`` of its ``headers`` in one header, and its other ``headers``
    win over the ``Authorization`` made from ``token``."""
    query: dict[str, str] = {}
    sent: dict[str, str] = {}
    if token is not None and auth == "header":
        sent["Authorization"] = f"Bearer {token}"
    elif token is not None and auth == "query":
        query["access_token"] = token
    if token is None or auth != "frame":  # else they go in the authenticate frame
        if session_id:
            query["session_id"] = session_id
        if deliver:
            query["deliver"] = "1"
    if connection_id:
        query["connection_id"] = connection_id
    jar = [f"{name}={value}" for name, value in cookies.items()]
    for name, value in headers.items():
        if name.lower() == "cookie":
            jar.insert(0, value)
        else:
            sent = {k: v for k, v in sent.items() if k.lower() != name.lower()}
            sent[name] = value
    if jar:
        sent["Cookie"] = "; ".join(jar)
    parts = urlsplit(url)
    merged = "&".join(q for q in (parts.query, urlencode(query)) if q)
    return urlunsplit(parts._replace(query=merged)), sent


class DeviceConnection:
    """A device's socket: handshake, reader, requests, events, and reconnection. The frames
    themselves are :class:`tidings.client.DeviceClient`'s (``_handle``)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        session_id: str | None,
        connection_id: str | None,
        auth: AuthMode,
        open_timeout: float,
        deliver: bool,
        reconnect: bool,
        get_token: TokenSource | None,
        cookies: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        backoff_base: float,
        backoff_max: float,
    ) -> None:
        if auth == "frame" and token is None and get_token is None:
            raise ValueError("auth='frame' needs a token or get_token")
        self.url = url
        self.token = token
        self.get_token = get_token
        self.cookies = dict(cookies or {})
        self.headers = dict(headers or {})
        self.session_id = session_id
        self.connection_id = connection_id
        self.auth: AuthMode = auth
        self.open_timeout = open_timeout
        self.deliver = deliver
        self.reconnect = reconnect
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.user_id: str | None = None
        self.node: str | None = None
        self.welcome: dict[str, Any] | None = None
        #: a connection is open and authenticated
        self.connected = False
        self.close_code: int | None = None
        self.close_reason = ""
        #: the topics this client subscribed to, replayed after a reconnection
        self.topics: set[str] = set()
        #: last seq seen per topic, for read_notifications after a reconnection
        self.topic_seq: dict[str, int] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._state_changed = asyncio.Condition()
        self._closing = False
        self._finished = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _handle(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _drain(self) -> None:
        """What to finish before the socket closes on :meth:`close`."""

    async def connect(self) -> dict[str, Any]:
        """Open the socket and authenticate; returns the ``welcome`` frame. This first attempt
        is not retried, even with ``reconnect``: its failure is raised.

        Raises:
            ClientError: the server refused the credentials (``status`` 401 at the handshake,
                or ``code`` ``"closed"`` with the close code in ``details``), or ``get_token``
                failed (``code`` ``"token"``).
        """
        self._closing = self._finished = False
        return await self._open()

    async def _open(self) -> dict[str, Any]:
        token = self.token
        if self.get_token is not None:
            try:
                token = self.token = await self.get_token()
            except Exception as exc:
                raise ClientError("token", f"get_token failed: {exc!r}") from exc
        url, headers = handshake(
            self.url,
            token=token,
            auth=self.auth,
            session_id=self.session_id,
            connection_id=self.connection_id,
            deliver=self.deliver,
            cookies=self.cookies,
            headers=self.headers,
        )
        try:
            ws = await websockets.connect(
                url,
                additional_headers=headers,
                open_timeout=self.open_timeout,
                max_size=None,
                compression=None,
            )
        except websockets.InvalidStatus as exc:
            response = exc.response
            try:
                body = orjson.loads(response.body or b"{}")
            except orjson.JSONDecodeError:
                body = {}
            body = body if isinstance(body, dict) else {}
            raise ClientError(
                str(body.get("error", "refused")),
                str(body.get("message", "handshake refused")),
                response.status_code,
            ) from None
        try:
            if self.auth == "frame" and token is not None:
                frame: dict[str, Any] = {"type": "authenticate", "token": token}
                if self.session_id:
                    frame["session_id"] = self.session_id
                if self.deliver:
                    frame["deliver"] = True
                await ws.send(orjson.dumps(frame).decode())
            welcome = await self._first_welcome(ws)
        except BaseException:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await ws.close()
            raise
        self._ws, self.welcome = ws, welcome
        self.connection_id = welcome["connection_id"]
        self.session_id = welcome["session_id"]
        self.user_id = welcome["user_id"]
        self.node = welcome["node"]
        self._reader = asyncio.create_task(self._read(ws))
        self.connected = True
        await self._notify()
        return welcome

    async def _first_welcome(self, ws: ClientConnection) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.open_timeout):
                while True:
                    frame = orjson.loads(await ws.recv())
                    if frame.get("type") == "welcome":
                        return dict(frame)
                    if frame.get("type") == "error":
                        raise ClientError(str(frame.get("code")), str(frame.get("message")))
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            self.close_code = code
            reason = exc.rcvd.reason if exc.rcvd else ""
            raise ClientError("closed", reason or "connection closed", close_code=code) from None

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                await self._handle(orjson.loads(message))
        except websockets.ConnectionClosed:
            pass
        finally:
            rcvd = ws.protocol.close_rcvd
            if rcvd is not None:
                self.close_code, self.close_reason = rcvd.code, rcvd.reason
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ClientError("closed", "connection closed"))
            self._waiting.clear()
            self.connected = False
            if self.reconnect and not self._closing:
                code, reason = (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")
                self._spawn(self._come_back(code, reason))
            else:
                self._emit(None)
            self._spawn(self._notify())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, event: dict[str, Any] | None) -> None:
        """Hand the reader an event (``None``: the end, only once)."""
        if event is None:
            if self._finished:
                return
            self._finished = True
        self._events.put_nowait(event)

    async def _notify(self) -> None:
        """Wake :meth:`wait_connected` (``connected`` or the end changed)."""
        async with self._state_changed:
            self._state_changed.notify_all()

    async def _come_back(self, code: int | None, reason: str) -> None:
        if await self._reconnect(code, reason):
            await self._replay_topics()
        else:
            self._emit(None)
            await self._notify()

    async def _reconnect(self, code: int | None, reason: str) -> bool:
        """After the connection closed with ``code`` (``None``: no close frame, the node died
        or the network went): attempt again with backoff until a connection is up (True) or an
        answer that another attempt cannot change (False, after a ``stopped`` event).

        Refused credentials end it, unless there is ``get_token``: then one more attempt is
        made with a fresh token, and a second refusal in a row ends it."""
        outcome = verdict(code)
        detail: dict[str, Any] = {"code": 1006 if code is None else code, "reason": reason}
        refusals = attempt = 0
        while True:
            if outcome == "unauthorized":
                refusals += 1
                if self.get_token is None or refusals >= 2:
                    self._emit({"type": "stopped", "why": "unauthorized", **detail})
                    return False
            elif outcome == "stop":
                self._emit({"type": "stopped", "why": "final", **detail})
                return False
            delay = backoff(attempt, self.backoff_base, self.backoff_max)
            if attempt == 0:
                self._emit({"type": "disconnected", **detail, "retry_in": round(delay, 3)})
            attempt += 1
            await asyncio.sleep(delay)
            try:
                welcome = await self._open()
            except ClientError as exc:
                close_code = exc.details.get("close_code")
                code = close_code if isinstance(close_code, int) else None
                outcome = verdict(code, exc.status)
                detail = {"code": code, "status": exc.status, "reason": exc.message}
                if exc.code == "token":
                    self._emit({"type": "error", "code": "token", "message": exc.message})
                continue
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                outcome, detail = "retry", {"code": None, "reason": str(exc) or repr(exc)}
                continue
            keys = ("connection_id", "session_id", "user_id", "node")
            self._emit(
                {"type": "reconnected", "attempts": attempt, **{k: welcome[k] for k in keys}}
            )
            return True

    async def _topic_end(self, topic: str) -> None:
        """Note where ``topic`` stands now, so that a replay after a reconnection starts there
        (not with the topic's whole stored history)."""
        answer = await self.request(
            {"type": "readNotifications", "topic": topic, "since": TOPIC_END}
        )
        self.topic_seq[topic] = max(self.topic_seq.get(topic, 0), int(answer["last_seq"]))

    async def _replay_topics(self) -> None:
        """What each subscribed topic got while the client was away, from the last seq seen
        (the server gives the session its subscriptions back by itself)."""
        for topic in sorted(self.topics):
            since = self.topic_seq.get(topic, 0)
            frame = {"type": "readNotifications", "topic": topic, "since": since}
            try:
                answer = await self.request(frame)
            except ClientError as exc:
                if exc.code in ("closed", "not_connected"):
                    return  # lost again: the next connection replays
                failed = {"code": "replay_failed", "topic": topic, "message": str(exc)}
                self._emit({"type": "error", **failed})
                continue
            except (TimeoutError, websockets.ConnectionClosed):
                return
            if not answer.get("recovered", True):
                self._emit({"type": "error", "code": "replay_incomplete", "topic": topic})

    async def wait_connected(self, *, timeout: float = 30.0) -> None:
        """Wait until a connection is up (at once if one is).

        Raises:
            ClientError: ``closed``: the client has stopped for good.
            TimeoutError: still not connected after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout), self._state_changed:
            await self._state_changed.wait_for(lambda: self.connected or self._finished)
        if not self.connected:
            raise ClientError("closed", "the client has stopped", close_code=self.close_code)

    async def request(self, frame: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
        """Send a frame with a fresh ``id`` and return the server's direct answer.

        Raises:
            ClientError: the answer is an ``error`` frame; ``not_connected`` before
                :meth:`connect` or, with ``reconnect``, while reconnecting; ``closed`` when the
                connection is lost before the answer.
        """
        if self._ws is None or (self.reconnect and not self.connected):
            raise ClientError("not_connected", "not connected: call connect() or wait_connected()")
        frame_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[frame_id] = future
        try:
            await self._ws.send(orjson.dumps({**frame, "id": frame_id}).decode())
            async with asyncio.timeout(timeout):
                answer = await future
        finally:
            self._waiting.pop(frame_id, None)
        if answer.get("type") == "error":
            details = {
                k: v for k, v in answer.items() if k not in ("type", "id", "code", "message")
            }
            raise ClientError(str(answer.get("code")), str(answer.get("message")), **details)
        return answer

    async def next_event(self, *, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next frame that was not a direct answer, or event of the client's own
        (``None`` once closed for good)."""
        async with asyncio.timeout(timeout):
            return await self._events.get()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every frame that is not a direct answer, and the client's own events, until the
        client is closed for good."""
        while (frame := await self._events.get()) is not None:
            yield frame

    async def send_raw(self, text: str) -> None:
        """Send a frame as is (for tests of bad input)."""
        if self._ws is None:
            raise ClientError("not_connected", "call connect() first")
        await self._ws.send(text)

    async def close(self) -> None:
        """Close the connection and stop reconnecting; :meth:`next_event` then gives ``None``."""
        self._closing = True
        await self._drain()
        for task in list(self._tasks):
            task.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.connected = False
        self._emit(None)
        await self._notify()
