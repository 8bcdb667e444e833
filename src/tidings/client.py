"""Python clients: :class:`TidingsClient` for services, :class:`DeviceClient` for devices.

Both are asyncio. The device client speaks wire contract v1 and keeps the latest count, applying
a count only when its version is newer than the one it has::

    async with DeviceClient("ws://127.0.0.1:8000/ws", token=token) as device:
        await device.wait_for_count(lambda count: count > 0)
        notifications = await device.get_unseen()
        await device.mark_seen([n["notification_id"] for n in notifications])

With ``reconnect=True`` it comes back by itself after the connection is lost
(:mod:`tidings.client_reconnect`); docs/python-client.md is its guide.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx
import orjson
import websockets

from tidings.client_reconnect import AuthMode, DeviceConnection, TokenSource
from tidings.errors import ClientError

__all__ = ["AuthMode", "DeviceClient", "TidingsClient"]


class TidingsClient:
    """The service API: gets OAuth2 tokens by itself and sends notifications."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        timeout: float = 10.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._owns_http = http is None
        self._token: str | None = None
        self._token_expiry = 0.0
        self._token_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def token(self) -> str:
        """A valid access token, fetched again shortly before the old one expires."""
        async with self._token_lock:
            if self._token is None or time.monotonic() > self._token_expiry:
                form = {"grant_type": "client_credentials"}
                if self.scope:
                    form["scope"] = self.scope
                response = await self._http.post(
                    f"{self.base_url}/oauth/token",
                    data=form,
                    auth=(self.client_id, self.client_secret),
                )
                body = _json(response)
                if response.status_code != 200:
                    raise ClientError(
                        str(body.get("error", "error")),
                        str(body.get("error_description", response.text)),
                        response.status_code,
                    )
                self._token = str(body["access_token"])
                self._token_expiry = time.monotonic() + int(body["expires_in"]) * 0.9
            return self._token

    async def publish(
        self, topic: str, data: Any, *, origin_session_id: str | None = None
    ) -> dict[str, Any]:
        """Publish to a topic (scope ``publish``); returns ``{topic, seq}``."""
        body: dict[str, Any] = {"topic": topic, "data": data}
        if origin_session_id is not None:
            body["origin_session_id"] = origin_session_id
        return await self._call("POST", "/publish", body)

    async def notify(
        self, user_id: str, data: Any, *, notification_id: str | None = None
    ) -> dict[str, Any]:
        """Send a notification; returns it as the server stored it."""
        body: dict[str, Any] = {"user_id": user_id, "data": data}
        if notification_id is not None:
            body["notification_id"] = notification_id
        return await self._call("POST", "/notify", body)

    async def health(self) -> dict[str, Any]:
        response = await self._http.get(f"{self.base_url}/health")
        return _json(response)

    async def _call(self, method: str, path: str, body: Any) -> dict[str, Any]:
        for attempt in range(2):
            token = await self.token()
            response = await self._http.request(
                method,
                f"{self.base_url}{path}",
                content=orjson.dumps(body),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            if response.status_code == 401 and attempt == 0:
                self._token = None  # expired or the server's key rotated: fetch a new one
                continue
            payload = _json(response)
            if response.status_code >= 400:
                detail = payload.get("message") or payload.get("detail") or response.text
                raise ClientError(
                    str(payload.get("error", "http_error")), str(detail), response.status_code
                )
            return payload
        raise AssertionError("unreachable")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {"data": data}


class DeviceClient(DeviceConnection):
    """One device's WebSocket connection to tidings (docs/python-client.md is its guide).

    ``auth`` chooses how ``token`` travels: the ``Authorization`` header (default), the
    ``access_token`` query parameter, or an ``authenticate`` frame after connecting. Without a
    token, ``cookies`` and ``headers`` (sent on every handshake) authenticate the device to a
    node that delegates to the application, or to the application's own endpoint (embedded).
    ``connection_id`` identifies the device across reconnections (as the browser cookie does);
    after :meth:`connect` it holds the id the server confirmed, and ``session_id`` the session.

    With ``deliver=True`` the server pushes every notification this device has not acknowledged
    as a ``notification`` frame, at least once. The client drops repeats by ``notification_id``
    (it remembers the last ``dedupe_window`` ids), so each appears once among :meth:`events`,
    and with ``auto_ack`` it acknowledges them (repeats too: the server only forgets what is
    acknowledged).

    With ``reconnect=True`` a lost connection comes back by itself, as ``tidings.js`` does
    (:mod:`tidings.client_reconnect`): backoff from ``backoff_base`` doubling up to
    ``backoff_max`` seconds with jitter, a token from ``get_token`` (when given) on each attempt,
    the same device and session (its queue and topics resume), topics replayed from the last seq
    seen. ``disconnected``, ``reconnected`` and ``stopped`` events say so, and :meth:`next_event`
    gives ``None`` only once the client stops for good.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        session_id: str | None = None,
        connection_id: str | None = None,
        auth: AuthMode = "header",
        open_timeout: float = 10.0,
        deliver: bool = False,
        auto_ack: bool = True,
        dedupe_window: int = 10_000,
        reconnect: bool = False,
        get_token: TokenSource | None = None,
        cookies: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        super().__init__(
            url,
            token=token,
            session_id=session_id,
            connection_id=connection_id,
            auth=auth,
            open_timeout=open_timeout,
            deliver=deliver,
            reconnect=reconnect,
            get_token=get_token,
            cookies=cookies,
            headers=headers,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )
        self.count: int | None = None
        #: the unread count and the unseen count per category, with ``count`` (protocol 1.1)
        self.unread = 0
        self.categories: dict[str, int] = {}
        self.version = -1
        self._count_changed = asyncio.Condition()
        self.auto_ack = auto_ack
        self.dedupe_window = dedupe_window
        self.duplicates = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._to_ack: list[str] = []
        self._acker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "newNotificationCountChanged":
            version = int(frame["version"])
            if version > self.version:
                self.version = version
                self.count = int(frame["count"])
                self.unread = int(frame.get("unread", 0))
                self.categories = dict(frame.get("categories") or {})
                async with self._count_changed:
                    self._count_changed.notify_all()
        if kind == "topicMessage":
            topic, seq = str(frame["topic"]), int(frame["seq"])
            self.topic_seq[topic] = max(self.topic_seq.get(topic, 0), seq)
        if kind == "notification":
            nid = str(frame["notification"]["notification_id"])
            if self.auto_ack:
                self._queue_ack(nid)
            if nid in self._seen:
                self.duplicates += 1
                return
            self._seen[nid] = None
            if len(self._seen) > self.dedupe_window:
                self._seen.popitem(last=False)
        frame_id = frame.get("id")
        if kind in ("reply", "error", "newNotificationData") and frame_id in self._waiting:
            future = self._waiting.pop(frame_id)
            if not future.done():
                future.set_result(frame)
            return
        self._events.put_nowait(frame)

    def _queue_ack(self, notification_id: str) -> None:
        self._to_ack.append(notification_id)
        if self._acker is None or self._acker.done():
            self._acker = asyncio.create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        await asyncio.sleep(0)  # let a burst of frames accumulate into one ack
        while self._to_ack:
            batch, self._to_ack = self._to_ack[:1000], self._to_ack[1000:]
            try:
                await self.ack(batch)
            except (ClientError, websockets.ConnectionClosed, TimeoutError):
                return  # unacknowledged ones are sent again on reconnection

    async def _drain(self) -> None:
        if self._acker is not None and not self._acker.done():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._acker

    async def ack(self, notification_ids: Sequence[str]) -> int:
        """Acknowledge delivered notifications (deliver mode); returns how many."""
        answer = await self.request({"type": "ack", "notification_ids": list(notification_ids)})
        return int(answer.get("acked", 0))

    async def subscribe(self, *topics: str) -> list[str]:
        """Subscribe this session to topics (kept for the session across reconnections; with
        ``reconnect``, what they get while the client is away is replayed when it is back).

        Raises:
            ClientError: ``forbidden_topic`` with the refused topics in ``details``.
        """
        answer = await self.request({"type": "subscribe", "topics": list(topics)})
        subscribed = list(answer["topics"])
        self.topics.update(subscribed)
        if self.reconnect:
            for topic in subscribed:
                if topic not in self.topic_seq:
                    await self._topic_end(topic)
        return subscribed

    async def unsubscribe(self, *topics: str) -> list[str]:
        answer = await self.request({"type": "unsubscribe", "topics": list(topics)})
        self.topics.difference_update(answer["topics"])
        return list(answer["topics"])

    async def read_notifications(self, topic: str, since: int | None = None) -> bool:
        """Replay what was missed on ``topic`` after ``since`` (default: the last seq this
        client saw); the messages arrive as events before this returns ``recovered``."""
        after = self.topic_seq.get(topic, 0) if since is None else since
        answer = await self.request({"type": "readNotifications", "topic": topic, "since": after})
        return bool(answer["recovered"])

    async def forget(self) -> None:
        """Log this device out: the server deletes its queue and closes the connection."""
        await self.request({"type": "forgetDevice"})

    async def get_unseen(self, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest unseen notifications (they stay unseen until :meth:`mark_seen`)."""
        answer = await self.request({"type": "getUnseen", "limit": limit})
        return list(answer["notifications"])

    async def get_notifications(
        self,
        *,
        state: str = "all",
        category: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the user's history, newest first, and the cursor of the next page
        (``None`` at the end)."""
        frame: dict[str, Any] = {"type": "getNotifications", "state": state, "limit": limit}
        if category is not None:
            frame["category"] = category
        if cursor is not None:
            frame["cursor"] = cursor
        answer = await self.request(frame)
        return list(answer["notifications"]), answer.get("next_cursor")

    async def mark_seen(self, notification_ids: Sequence[str] | None = None) -> int:
        """Mark notifications seen (``None``: all the user's unseen ones); how many changed."""
        return await self._mark("markSeen", "markAllSeen", notification_ids)

    async def mark_read(self, notification_ids: Sequence[str] | None = None) -> int:
        """Read notifications (``None``: all the user's); how many changed."""
        return await self._mark("markRead", "markAllRead", notification_ids)

    async def archive(self, notification_ids: Sequence[str]) -> int:
        """Archive notifications (they are seen and read too); how many changed."""
        return await self._mark("archive", "", notification_ids)

    async def unarchive(self, notification_ids: Sequence[str]) -> int:
        """Bring archived notifications back to the inbox; how many changed."""
        return await self._mark("unarchive", "", notification_ids)

    async def _mark(self, kind: str, every: str, notification_ids: Sequence[str] | None) -> int:
        if notification_ids is None:
            answer = await self.request({"type": every})
        else:
            answer = await self.request({"type": kind, "notification_ids": list(notification_ids)})
        return int(answer.get("marked", 0))

    async def wait_for_count(
        self, predicate: Callable[[int], bool] | int, *, timeout: float = 10.0
    ) -> int:
        """Wait until the count satisfies ``predicate`` (or equals it, given an int)."""
        test = predicate if callable(predicate) else (lambda c, want=predicate: c == want)
        async with asyncio.timeout(timeout), self._count_changed:
            await self._count_changed.wait_for(lambda: self.count is not None and test(self.count))
        assert self.count is not None
        return self.count
